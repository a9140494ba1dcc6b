"""Links in the documentation lead somewhere: every relative Markdown link in README.md and
docs/*.md names a file of the repository, and every `docs/<name>.md` a source file cites exists
(`../shared/docs/...`: the reference docs beside the repository, when they are there)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CITED_DOC = re.compile(r"(?:\.\./shared/)?\bdocs/[\w.-]+\.md\b")
SOURCE_FOLDERS = ("node", "aggregators", "cli", "proto", "bench", "deploy", "scripts", "tests")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def broken_links(path: Path) -> list[str]:
    broken = []
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)  # code blocks hold no links
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        file_part = target.split("#", 1)[0]
        if file_part and not (path.parent / file_part).exists():
            broken.append(f"{path.relative_to(ROOT)}: {target}")
    return broken


def test_relative_links_in_the_docs_lead_to_files() -> None:
    files = markdown_files()
    assert len(files) > 5
    broken = [item for path in files for item in broken_links(path)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_documents_cited_by_the_code_exist() -> None:
    missing = []
    for folder in SOURCE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix not in (".py", ".md", ".sh", ".toml", ".yaml", ".yml") or ".venv" in path.parts:
                continue
            for cited in set(CITED_DOC.findall(path.read_text(errors="replace"))):
                if cited.startswith("../shared/") and not (ROOT / "../shared").is_dir():
                    continue  # the team's reference docs lie beside the repository (CI puts them there)
                if not (ROOT / cited).exists():
                    missing.append(f"{path.relative_to(ROOT)}: {cited}")
    assert not missing, "documents cited but missing:\n" + "\n".join(missing)


def test_the_link_check_finds_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("")
    page.write_text("[ok](there.md) [ok](there.md#part) [web](https://example.org) [gone](missing.md)\n"
                    "```\n[in code](nothing.md)\n```\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert broken_links(page) == ["page.md: missing.md"]
    finally:
        ROOT = saved
