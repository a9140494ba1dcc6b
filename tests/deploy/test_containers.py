"""deploy/docker, deploy/grafana and deploy/k8s, checked offline (no container engine runs here):
hadolint and shellcheck on the image's files, the entrypoint run for real, the compose file
against the compose-spec schema and the services it must declare, the Grafana dashboard against
the metrics a real node exposes, and the Kubernetes manifests through `kubectl kustomize` and
the Kubernetes API schemas."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fednode.node.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.skip(f"{name} is not installed (make setup installs it: the dev extra / scripts/setup.sh)")
    return found


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            joined.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in joined]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            for part in shlex.split(args):
                key, _, value = part.partition("=")
                env[key] = value
    return env


# ------------------------------------------------------------------------------------- Dockerfile
def test_hadolint_passes_on_the_dockerfile() -> None:
    result = subprocess.run([tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # ... and hadolint does bite: a root, unpinned, cache-keeping variant fails.
    bad = DOCKERFILE.read_text().replace("USER 10001:10001", "USER root").replace("--no-cache-dir ", "")
    result = subprocess.run([tool("hadolint"), "-"], input=bad, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "DL3002" in result.stdout and "DL3042" in result.stdout, result.stdout


@pytest.mark.parametrize("script", ["docker/entrypoint.sh", "k8s/make-secrets.sh"])
def test_shell_scripts_pass_shellcheck(script: str) -> None:
    result = subprocess.run([tool("shellcheck"), "--shell=sh", str(DEPLOY / script)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout
    assert os.access(DEPLOY / script, os.X_OK)


def test_dockerfile_is_multi_stage_non_root_with_a_state_volume_and_grpc_healthcheck() -> None:
    steps = dockerfile_instructions()
    stages = [args for instruction, args in steps if instruction == "FROM"]
    assert len(stages) >= 2 and stages[0].endswith("AS build") and stages[-1].endswith("AS runtime")
    runtime = steps[max(i for i, (instruction, _) in enumerate(steps) if instruction == "FROM"):]
    users = [args for instruction, args in runtime if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root") and users[-1].split(":")[0].isdigit()
    assert ("VOLUME", '["/var/lib/fednode"]') in runtime
    env = dockerfile_env()
    assert env["FEDNODE_NODE_STATE_DIR"] == "/var/lib/fednode"
    healthcheck = next(args for instruction, args in runtime if instruction == "HEALTHCHECK")
    probe = json.loads(healthcheck.split("CMD", 1)[1].strip())
    assert probe[:2] == ["fednode", "health"]
    health_port = env["FEDNODE_ADMIN_HEALTH_LISTEN"].rsplit(":", 1)[1]
    assert probe[probe.index("--address") + 1] == f"127.0.0.1:{health_port}"
    exposed = {a for instruction, args in runtime if instruction == "EXPOSE" for a in args.split()}
    assert {"4001", health_port, env["FEDNODE_METRICS_PORT"]} <= exposed
    assert "/tcp/4001" in env["FEDNODE_MESH_LISTEN"]
    # CPU torch by default, a CUDA build by build argument.
    args = {a.split("=")[0]: a.partition("=")[2] for instruction, a in steps if instruction == "ARG"}
    assert args["TORCH_VARIANT"] == "cpu" and "${TORCH_VARIANT}" in args["TORCH_INDEX_URL"]
    assert any('torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in a for i, a in steps if i == "RUN")
    pinned = re.search(r'"torch(?:>=|==)([0-9.]+)', (ROOT / "pyproject.toml").read_text())
    assert pinned and args["TORCH_VERSION"].startswith(pinned.group(1)[:4])


def test_dockerfile_environment_is_valid_fednode_configuration() -> None:
    env = {k: v for k, v in dockerfile_env().items() if k.startswith("FEDNODE_")}
    config, sources = load_config(environ=env)
    assert config.metrics.host == "0.0.0.0" and config.node.log_format == "json"
    assert all(origin.startswith("env:") for key, origin in sources.items())


def test_dockerfile_copies_only_what_exists_and_the_dockerignore_lets_it_through() -> None:
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().split()
    allowed = [line[1:].rstrip("*").rstrip("/") for line in ignore if line.startswith("!")]
    for instruction, args in dockerfile_instructions():
        if instruction != "COPY" or "--from=" in args:
            continue
        sources = [part for part in shlex.split(args) if not part.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), source
            assert any(source == a or source.startswith(a + "/") or a.startswith(source) for a in allowed), source


def run_entrypoint(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FEDNODE_")}
    full.update({"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path)}, **env)
    return subprocess.run(["sh", str(DEPLOY / "docker" / "entrypoint.sh"), *args], capture_output=True, text=True,
                          env=full, timeout=120)


def test_entrypoint_publishes_the_bootstrap_peer_id_and_members_dial_it(tmp_path: Path) -> None:
    bootstrap_dir, member_dir, shared = tmp_path / "bootstrap", tmp_path / "member", tmp_path / "shared"
    shared.mkdir()
    published = run_entrypoint(tmp_path, "identity", "show", "--format", "json",
                               FEDNODE_NODE_STATE_DIR=str(bootstrap_dir), PEER_ID_FILE=str(shared / "peer-id"))
    assert published.returncode == 0, published.stderr
    peer_id = json.loads(published.stdout)["peer_id"]
    assert (shared / "peer-id").read_text().strip() == peer_id
    member = run_entrypoint(tmp_path, "config", "show", "--format", "json", FEDNODE_NODE_STATE_DIR=str(member_dir),
                            BOOTSTRAP_HOST="localhost", BOOTSTRAP_PORT="4101",
                            BOOTSTRAP_PEER_ID_FILE=str(shared / "peer-id"))
    assert member.returncode == 0, member.stderr
    assert json.loads(member.stdout)["mesh"]["bootstrap"] == [f"/ip4/127.0.0.1/tcp/4101/p2p/{peer_id}"]
    # Without a way to learn the peer id it stops with a clear message.
    lost = run_entrypoint(tmp_path, "version", BOOTSTRAP_HOST="localhost")
    assert lost.returncode == 3 and "BOOTSTRAP_PEER_ID" in lost.stderr


def test_entrypoint_installs_a_mounted_identity_with_mode_0600(tmp_path: Path, cli) -> None:
    source_dir = tmp_path / "secret"
    assert cli("identity", "create", "--state-dir", str(source_dir)).returncode == 0
    expected = json.loads(cli("identity", "show", "--state-dir", str(source_dir), "--format", "json").stdout)["peer_id"]
    os.chmod(source_dir / "identity.key", 0o440)  # as a Secret volume with fsGroup mounts it
    state = tmp_path / "state"
    state.mkdir()
    shown = run_entrypoint(tmp_path, "identity", "show", "--format", "json", FEDNODE_NODE_STATE_DIR=str(state),
                           IDENTITY_SOURCE=str(source_dir / "identity.key"))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["peer_id"] == expected
    assert stat.S_IMODE((state / "identity.key").stat().st_mode) == 0o600


# ------------------------------------------------------------------------------------- compose
def compose() -> dict:
    import yaml

    return yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())


def test_compose_matches_the_compose_spec_schema() -> None:
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                             str(DEPLOY / "docker" / "compose.yaml")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_declares_a_bootstrap_three_members_prometheus_and_grafana() -> None:
    spec = compose()
    services = spec["services"]
    assert set(services) == {"bootstrap", "member-0", "member-1", "member-2", "prometheus", "grafana"}
    fednode_services = [name for name in services if name == "bootstrap" or name.startswith("member-")]
    bootstrap = services["bootstrap"]
    assert bootstrap["command"][:3] == ["start", "--role", "bootstrap"]
    shared_file = bootstrap["environment"]["PEER_ID_FILE"]
    state_volumes = set()
    shards = []
    for name in fednode_services:
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert (DEPLOY / "docker" / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        state = [v for v in service["volumes"] if v.endswith(":/var/lib/fednode")]
        assert len(state) == 1
        state_volumes.add(state[0].split(":")[0])
        env = {k: str(v) for k, v in service["environment"].items()}
        load_config(environ={k: v for k, v in env.items() if k.startswith("FEDNODE_")})  # valid settings
        if name.startswith("member-"):
            assert env["BOOTSTRAP_HOST"] == "bootstrap" and env["BOOTSTRAP_PEER_ID_FILE"] == shared_file
            assert service["depends_on"]["bootstrap"]["condition"] == "service_healthy"
            assert service["command"][0] == "start"
            shards.append(service["command"][service["command"].index("--shard") + 1])
    assert len(state_volumes) == 4 and state_volumes <= set(spec["volumes"])  # a volume per node
    assert sorted(shards) == ["0/3", "1/3", "2/3"]
    # Prometheus scrapes every fednode container's metrics port.
    import yaml

    scrape = yaml.safe_load((DEPLOY / "docker" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    port = dockerfile_env()["FEDNODE_METRICS_PORT"]
    assert targets == {f"{name}:{port}" for name in fednode_services}
    # Grafana gets the provisioning and the dashboard from the repository.
    mounts = {v.split(":")[0]: v.split(":")[1] for v in services["grafana"]["volumes"] if v.startswith(".")}
    for source in mounts:
        assert (DEPLOY / "docker" / source).resolve().is_dir(), source
    assert "/etc/grafana/provisioning" in mounts.values()
    dashboards = next(s for s, t in mounts.items() if t == "/var/lib/grafana/dashboards")
    assert ((DEPLOY / "docker" / dashboards).resolve() / "fednode.json").is_file()


# ------------------------------------------------------------------------------------- Grafana
def exposed_metric_names() -> set[str]:
    """Every series name a real node exposes after a round, an update decision and traffic."""
    from prometheus_client.parser import text_string_to_metric_families

    from fednode.node.metrics import NodeMetrics

    metrics = NodeMetrics()
    metrics.set_identity(version="0", peer_id="p", device="cpu", task="t")
    metrics.record_round("f", 1, model_version=1, accuracy=0.5, loss=1.0, train_loss=1.0, aggregation_seconds=0.1,
                         participants=2)
    metrics.record_update("f", accepted=False, reason="bad_signature")
    metrics.record_transfer(1000, 0.1)
    metrics.set_peers({"direct": 1})
    from types import SimpleNamespace  # the shape of MeshStats that metrics reads

    metrics.observe_mesh_stats(SimpleNamespace(gossip_bytes_published=10, gossip_bytes_received=10, blob_bytes_sent=10,
                                               blob_bytes_received=10, gossip_rejected={"not_member": 1}))
    return {s.name for family in text_string_to_metric_families(metrics.render().decode()) for s in family.samples}


def test_grafana_dashboard_uses_metrics_a_node_really_exposes() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "fednode.json").read_text())
    names = exposed_metric_names()
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\b((?:fednode|process)_[a-z_]+)\b", expr)}
    assert used and used <= names, sorted(used - names)
    # It shows what the issue asks for: labelled info, process collector, restored gauges.
    assert {"fednode_node_info", "process_cpu_seconds_total", "fednode_accuracy", "fednode_loss",
            "fednode_round", "fednode_updates_rejected_total"} <= used
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(t["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] for t in p["targets"])
    import yaml

    provisioned = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert provisioned["datasources"][0]["uid"] == "prometheus" and provisioned["datasources"][0]["type"] == "prometheus"


# ------------------------------------------------------------------------------------- Kubernetes
@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """`kubectl kustomize` (offline) of deploy/k8s with freshly made secrets."""
    import yaml

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: nothing to run `kubectl kustomize` with (Debian's kubernetes-client "
                    "1.20 is too old for kustomize v5 syntax; install kubectl >= 1.21 from the Kubernetes packages)")
    version = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60)
    kustomize = json.loads(version.stdout or "{}").get("kustomizeVersion", "v0")
    if int(re.sub(r"\D", "", kustomize.split(".")[0]) or 0) < 4:
        pytest.skip(f"kubectl's kustomize {kustomize} predates kustomize v4 (labels, envs): install kubectl >= 1.21")
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(DEPLOY / "k8s", copy, ignore=shutil.ignore_patterns("secrets"))
    env = {**os.environ, "FEDNODE": str(BIN / "fednode"), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    made = subprocess.run(["sh", str(copy / "make-secrets.sh")], capture_output=True, text=True, env=env, timeout=120)
    assert made.returncode == 0, made.stderr
    built = subprocess.run([kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    documents = [d for d in yaml.safe_load_all(built.stdout) if d]
    for document in documents:
        document["_secrets_dir"] = str(copy / "secrets")
    return documents


def by_kind(documents: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def test_manifests_match_the_kubernetes_schemas(manifests: list[dict]) -> None:
    import kubernetes_validate

    for document in manifests:
        clean = {k: v for k, v in document.items() if not k.startswith("_")}
        kubernetes_validate.validate(clean, "1.30.0", strict=True)
    # The check bites: an unknown field is an error.
    broken = {k: v for k, v in by_kind(manifests, "StatefulSet")["fednode-member"].items() if not k.startswith("_")}
    broken = json.loads(json.dumps(broken))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpcc"] = {"port": 9094}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30.0", strict=True)


def test_manifests_wire_members_bootstrap_probes_and_secrets(manifests: list[dict], cli) -> None:
    sets, services = by_kind(manifests, "StatefulSet"), by_kind(manifests, "Service")
    members, bootstrap = sets["fednode-member"], sets["fednode-bootstrap"]
    assert all(d["metadata"].get("namespace") == "fednode" for d in manifests if d["kind"] != "Namespace")
    # A volume per member, stable identities.
    assert members["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "state"
    container = members["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "state", "mountPath": "/var/lib/fednode"} in container["volumeMounts"]
    env = {e["name"]: e for e in container["env"]}
    assert int(env["SHARDS"]["value"]) == members["spec"]["replicas"]
    assert "$(POD_INDEX)/$(SHARDS)" in container["args"]
    # The bootstrap Service selects the bootstrap pods and carries the mesh port members dial.
    service = services["fednode-bootstrap"]
    assert service["spec"]["selector"].items() <= bootstrap["spec"]["template"]["metadata"]["labels"].items()
    assert env["BOOTSTRAP_HOST"]["value"] == "fednode-bootstrap"
    assert any(p["port"] == int(env["BOOTSTRAP_PORT"]["value"]) for p in service["spec"]["ports"])
    # Probes speak gRPC health to the health listener the configuration opens.
    config_map = next(d for name, d in by_kind(manifests, "ConfigMap").items() if name.startswith("fednode-config"))
    config_file = Path(manifests[0]["_secrets_dir"]).parent / "config.toml"
    assert config_map["data"]["config.toml"] == config_file.read_text()
    config, _ = load_config(config_file, environ={})
    health_port = int(config.admin.health_listen.rsplit(":", 1)[1])
    for statefulset in (members, bootstrap):
        pod = statefulset["spec"]["template"]["spec"]
        # The pod's settings from the environment are valid next to the ConfigMap's file.
        # Every FEDNODE_* variable must be a setting: the daemon refuses unknown ones.
        fixed = {e["name"]: e.get("value", "x") for e in pod["containers"][0]["env"] if e["name"].startswith("FEDNODE_")}
        load_config(config_file, environ=fixed)
        assert pod["securityContext"]["runAsNonRoot"] is True
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert pod["containers"][0][probe]["grpc"]["port"] == health_port
        mounted = {v["name"]: v for v in pod["volumes"]}
        # The admin token comes from a Secret, at the path the configuration reads.
        token_secret = mounted["admin-token"]["secret"]["secretName"]
        assert token_secret.startswith("fednode-admin-token")
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "admin-token")
        assert str(config.admin.token_file).startswith(mount["mountPath"] + "/")
    secrets = by_kind(manifests, "Secret")
    assert any(name.startswith("fednode-admin-token") for name in secrets)
    # The peer id the members are given is the one of the identity the bootstrap pod gets.
    peer_map = next(d for name, d in by_kind(manifests, "ConfigMap").items() if name.startswith("fednode-bootstrap-peer"))
    state = Path(manifests[0]["_secrets_dir"]).parent / "bootstrap-state"
    state.mkdir(exist_ok=True)
    shutil.copy(Path(manifests[0]["_secrets_dir"]) / "bootstrap-identity.key", state / "identity.key")
    os.chmod(state / "identity.key", 0o600)
    shown = json.loads(cli("identity", "show", "--state-dir", str(state), "--format", "json").stdout)
    assert peer_map["data"]["BOOTSTRAP_PEER_ID"] == shown["peer_id"]
    bootstrap_env = {e["name"]: e.get("value") for e in bootstrap["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert bootstrap_env["IDENTITY_SOURCE"] == "/etc/fednode/identity/identity.key"
