"""Run reports: PNG plots and one self-contained HTML page from a run or state directory.

`load_run(path)` reads what the daemons leave behind (summary.json, history.jsonl and its rotated
files, the audit log) from a `fednode launch` run directory or from one node's state directory;
`write_report(run, out_dir)` draws the plots with matplotlib (the `report` extra) and writes
`index.html` with the plots embedded, so the page can be mailed or archived as one file.
"""

from fednode.node.report.data import MemberData, RunData, load_run
from fednode.node.report.render import ReportError, write_report

__all__ = ["MemberData", "ReportError", "RunData", "load_run", "write_report"]
