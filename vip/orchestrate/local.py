"""The local executor: runs a step's missing tasks one after another in this process."""
from __future__ import annotations

from collections.abc import Callable

from tqdm import tqdm


def run_tasks(indices: list[int], run_one: Callable[[int, Callable[[int], None]], None], total_units: int,
              desc: str, progress: bool = True) -> None:
    """run_one(index, advance) runs one task and calls advance(n) as it goes."""
    with tqdm(total=total_units, desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for i in indices:
            run_one(i, bar.update)
