"""Shared behaviour of the entry points: bad input is one line on stderr and exit code 2."""
from __future__ import annotations

import sys
from contextlib import contextmanager

from vip.config import ConfigError
from vip.store import IncompleteError


@contextmanager
def fail_cleanly():
    try:
        yield
    except (ConfigError, IncompleteError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
