"""Tie a child process's life to its parent's: Linux's PR_SET_PDEATHSIG.

Used by the training worker (SIGKILL when its daemon dies, even by kill -9: a worker left behind
would keep writing checkpoints into a state dir a new daemon may be using) and by `fednode launch`
for the daemons it starts (SIGTERM when the launcher dies: no orphan nodes).
"""

from __future__ import annotations

import ctypes
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(signal_number: int) -> bool:
    """Have the kernel send `signal_number` to this process when its parent exits. True when it
    took effect; False on systems without prctl (the callers have a second way to notice: EOF on
    their link or pipe). Safe as a `subprocess` preexec_fn: it neither logs nor takes locks."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, signal_number)) == 0
    except (OSError, AttributeError):
        return False
