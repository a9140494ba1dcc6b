"""The training worker and the daemon's link to it.

A node runs as two processes (docs/architecture.md: processes, threads, the path of one update
and the link crossings on it): the daemon, without torch, and one training worker holding task,
model, trainer, runners and checkpoints. `WorkerProcess`
(node/worker/supervisor.py) is the daemon's handle on it; `process.py` is the worker itself;
`link.py` the framed-protobuf link between them (proto/v1/worker.proto); `remote_mesh.py` the
daemon's mesh as the worker's runners see it.
"""
