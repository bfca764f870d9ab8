"""Shared behaviour of the entry points: bad input is one line on stderr and exit code 2."""
from __future__ import annotations

import sys
from contextlib import contextmanager

from vip.config import ConfigError
from vip.store import IncompleteError


def _is_slurm_error(e: BaseException) -> bool:
    """A SlurmError of the Slurm executor (a Slurm command failed; the message is one line), matched by
    class name and package so that this module never imports the executor or submitit."""
    return any(c.__name__ == "SlurmError" and c.__module__.startswith("vip.orchestrate") for c in type(e).__mro__)


@contextmanager
def fail_cleanly():
    try:
        yield
    except (ConfigError, IncompleteError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as e:
        if not _is_slurm_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
