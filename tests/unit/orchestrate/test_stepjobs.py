"""The one description of the steps' jobs (vip.orchestrate.stepjobs.STEPS), which every driver reads:
its shape, and that the drivers' views of it (render's order, the status rows, the preflight's commands,
jobs/step.py's choices) are what they were when each kept its own table. No cluster, no model."""
from vip.orchestrate import preflight, render, stepjobs
from vip.orchestrate.stepjobs import ARRAY_STEPS, KINDS, STEPS


def test_every_step_waits_only_for_earlier_steps_and_has_a_known_kind():
    order = list(STEPS)
    assert order == ["loo", "select", "filter", "filter_merge", "target", "pairs", "curate", "train", "outcome"]
    for i, (name, spec) in enumerate(STEPS.items()):
        assert spec.name == name and spec.kind in KINDS and spec.what
        assert all(a in order[:i] for a in spec.after), name
        assert (spec.job is None) == spec.is_array, name  # an array's job is its tasks; a single step runs `job`
        if spec.is_array:
            assert spec.todo is not None and spec.read_plan is not None and spec.tasks.count is not None
            assert spec.kind == spec.tasks.kind


def test_the_drivers_views_of_the_registry():
    assert set(ARRAY_STEPS) == {"loo", "pairs", "filter"}
    assert [s for s, spec in STEPS.items() if spec.per_run] == ["filter", "filter_merge"]
    # submit.sh: the per-run steps first, then the stage's, each after the steps it needs
    assert list(render.STEPS) == ["filter", "filter_merge", "loo", "select", "target", "pairs", "curate", "train",
                                  "outcome"]
    assert {s: spec.after for s, spec in render.STEPS.items() if spec.after} == {
        "filter_merge": ("filter",), "select": ("loo",), "target": ("select",), "pairs": ("target", "filter_merge"),
        "curate": ("pairs",), "train": ("curate",), "outcome": ("train",)}
    assert stepjobs.ROWS["filter"] == ("filter", "filter_merge") and stepjobs.ROWS["filter_merge"] == ()
    assert stepjobs.STEP_CHOICES == ("loo", "select", "target", "pairs", "curate", "outcome")
    assert set(preflight.STEPS) == {"stage", "loo", "select", "target", "pairs", "curate", "outcome", "filter",
                                    "train", "render"}
    # the local driver: one line names the steps found done, in this order
    assert [s.local_name or s.name for s in STEPS.values() if s.local] == [
        "loo", "select", "filter", "target", "pairs+curate", "train", "outcome"]
    # only pairs waits for steps it is planned from: a continuation submits it
    assert [s for s, spec in STEPS.items() if spec.planned_from_after] == ["pairs"]
