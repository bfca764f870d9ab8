"""Leave-one-out evaluation: V(M) and V(M - unit) for every unit, on fixed prompts and seeds.

Work is split into tasks of (a few variants) x (a chunk of samples); a task loads the
model once and switches units off in place. Each task writes one HDF5 shard; `merge`
builds loo.h5 only when every shard is present and intact.

With loo.adaptive the samples are evaluated in rounds (vip.steps.loo.adaptive): the plan starts with
round 0 and `advance` appends the next round's tasks, for the full model and the units still in
play, once every task of the last round is done. Task indices only grow, so shards stay valid.
"""
from vip.selection import FULL  # loo.FULL: the name every reader of loo.h5 uses
from vip.steps.loo.merge import is_done, merge, table
from vip.steps.loo.plan import (merged_path, missing, plan, provenance, read_plan, rounds_left, shards,
                                step_dir, units_to_evaluate)
from vip.steps.loo.rounds import advance
from vip.steps.loo.tasks import evaluate, partial_dir, run_task

__all__ = ["FULL", "advance", "evaluate", "is_done", "merge", "merged_path", "missing", "partial_dir", "plan",
           "provenance", "read_plan", "rounds_left", "run_task", "shards", "step_dir", "table", "units_to_evaluate"]
