"""Shared behaviour of the entry points: bad input is one line on stderr and exit code 2.

The line is printed once: under a launcher that starts one process per rank and sets RANK (torchrun,
the deepspeed launcher) only rank 0 prints it (torchrun's own failure report names the other ranks'
exit codes). A parent that reports the line itself (the stage driver launching training) sets
VIP_ERROR_FILE: the line is then written to that file instead (by the first rank to fail).
"""
from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager

from vip.config import ConfigError
from vip.store import IncompleteError

ERROR_FILE = "VIP_ERROR_FILE"
# a file that cannot be written or read for these reasons is the user's to fix, not a bug
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _is_slurm_error(e: BaseException) -> bool:
    """A SlurmError of the Slurm executor (a Slurm command failed; the message is one line), matched by
    class name and package so that this module never imports the executor or submitit."""
    return any(c.__name__ == "SlurmError" and c.__module__.startswith("vip.orchestrate") for c in type(e).__mro__)


def report(message: str) -> None:
    """Print `error: message` once (see the module docstring)."""
    message = " ".join(str(message).split("\n"))  # one line, whatever the message held
    path = os.environ.get(ERROR_FILE)
    if path:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # another rank reported first
        except OSError:
            pass  # the parent's folder is gone: print it instead
        else:
            with os.fdopen(fd, "w") as f:
                f.write(message + "\n")
            return
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and os.environ.get("RANK", "0") not in ("", "0"):
        return
    print(f"error: {message}", file=sys.stderr, flush=True)


@contextmanager
def fail_cleanly():
    try:
        yield
    except (ConfigError, IncompleteError) as e:
        report(str(e))
        sys.exit(2)
    except OSError as e:
        if e.errno not in _USER_ERRNOS:
            raise
        report(f"{e.strerror}: {e.filename}" if e.filename else str(e))
        sys.exit(2)
    except RuntimeError as e:
        if not _is_slurm_error(e):
            raise
        report(str(e))
        sys.exit(2)


def read_reported(path) -> str:
    """The line a child process reported through VIP_ERROR_FILE, or ''."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
