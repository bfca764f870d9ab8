import dataclasses

import pytest
import yaml

from vip import config
from vip.config import ConfigError
from vip.store import RunDir

from helpers.paths import ROOT  # noqa: E402


def test_yaml_and_overrides_resolve_with_types(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("select:\n  k: 3\nmodel:\n  guidance: 2\n")
    cfg = config.load(f, ["loo.batch_size=5", "loo.units=down_blocks.0.motion_modules.0,mid_block.motion_modules.0",
                          "run.name=abc"])
    assert cfg.select.k == [3] and cfg.select.k_at(1) == cfg.select.k_at(5) == 3
    assert cfg.model.guidance == 2.0 and isinstance(cfg.model.guidance, float)
    assert cfg.loo.batch_size == 5
    assert cfg.loo.units == ["down_blocks.0.motion_modules.0", "mid_block.motion_modules.0"]
    assert cfg.run.name == "abc"


# configs/toyvid.yaml is the library default tuned for the embedded world, in these keys only (a key that
# drifts in either place fails here): a demo of under 10 minutes on 2 cores (4 sampler steps, 16 evaluation
# prompts, 24 x 3 candidate pairs), 8 then 2 units (7 of the 16 cost nothing), held-out scoring, the 324 grammar
# prompts in 3 filter tasks, and the revised recipe (no unconditional branch: it samples without guidance)
TOYVID_TUNING = {"model.steps": 4, "prompts.eval_count": 16, "select.k": [8, 2], "filter.prompts_per_task": 108,
                 "curate.max_prompts": 24,
                 "train.recipe": "revised", "train.reference": "student", "train.beta": 500.0, "train.w_sft": 100.0,
                 "train.prompt_dropout": 0.0, "train.epochs": 3, "train.checkpoint_every": 20, "prompts.heldout": "toyvid_heldout",
                 "prompts.heldout_count": 24}


def test_shipped_config_is_the_default_plus_the_toyvid_tuning():
    default, shipped = config.load(None).to_dict(), config.load(ROOT / "configs" / "toyvid.yaml").to_dict()
    differ = {f"{s}.{k}": shipped[s][k] for s in default for k in default[s] if default[s][k] != shipped[s][k]}
    assert differ == TOYVID_TUNING
    assert config.load(None, [f"{k}={v}" for k, v in TOYVID_TUNING.items()]).hash() == \
        config.load(ROOT / "configs" / "toyvid.yaml").hash()


@pytest.mark.parametrize("override, words", [
    (["select.kk=3"], ["select.kk", "k"]),
    (["nosuch.k=3"], ["nosuch"]),
    (["select.k=four"], ["select.k", "int", "four"]),
    (["select.k=0"], ["select.k", "at least 1"]),
    (["model.guidance=true"], ["model.guidance", "float"]),
    (["selectk=3"], ["section.key=value"]),
])
def test_bad_keys_and_types_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        config.load(None, override)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("select: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)


def test_hash_ignores_how_to_run_only():
    a = config.load(None)
    assert a.hash() == config.load(None, ["runtime.progress=false", "runtime.threads=1"]).hash()
    assert a.hash() == config.load(None, ["slurm.nodes=4", "train.nprocs=8"]).hash()  # resumable on another size
    assert a.hash() == config.load(None, ["train.checkpointing=every_block", "train.compile=true"]).hash() == \
        config.load(None, ["train.compile=true", "train.compile_backend=aot_eager"]).hash()
    assert a.hash() != config.load(None, ["select.k=3"]).hash()
    assert a.hash() != config.load(None, ["train.batch_size=8"]).hash()


def test_k_per_stage_and_the_last_entry_after_it():
    cfg = config.load(None, ["select.k=8,2"])
    assert cfg.select.k == [8, 2] and [cfg.select.k_at(n) for n in (1, 2, 3)] == [8, 2, 2]
    # one k is hashed as the int it was before lists, so runs frozen then keep their hash
    assert config.load(None, ["select.k=4"]).hash() == config.load(None).hash() != cfg.hash()
    assert config.load(None, ["select.k=[8, 2]"]).hash() == cfg.hash()
    with pytest.raises(ConfigError) as e:
        config.load(None, ["select.k="])
    assert str(e.value) == ("config key 'select.k' needs the units removed per stage (e.g. 4, or 8,2 for stages 1, 2); "
                            "got nothing")
    # the sign rules, word for word: at least 1 for ints, positive for floats, 0 or more for the rest
    for override, message in (("train.lr=0", "config key 'train.lr' must be positive, got 0.0"),
                              ("curate.alpha=-0.3", "config key 'curate.alpha' must be 0 or more, got -0.3")):
        with pytest.raises(ConfigError) as e:
            config.load(None, [override])
        assert str(e.value) == message
    # list items of str keys stay strings, whatever YAML would read them as
    assert config.load(None, ["loo.units=true,1"]).loo.units == ["true", "1"]
    with pytest.raises(ConfigError, match="select.k.*at least 1, got 0"):
        config.load(None, ["select.k=8,0"])


def test_a_recipe_sets_its_keys_and_explicit_keys_win():
    keys = ("reference", "beta", "w_sft", "lr", "min_lr")
    for name, values in config.RECIPES.items():
        t = config.load(None, [f"train.recipe={name}"]).train
        assert {k: getattr(t, k) for k in keys} == values
        # the recipe's name is not in the hash, the values it sets are: spelled out, it is the same run
        assert config.load(None, [f"train.recipe={name}"]).hash() == \
            config.load(None, [f"train.{k}={v}" for k, v in values.items()]).hash()
    assert config.load(None, ["train.recipe=revised", "train.beta=50"]).train.beta == 50.0
    shipped = config.load(ROOT / "configs" / "toyvid.yaml")
    assert shipped.train.recipe == "revised" and shipped.train.reference == "student"
    paper = config.load(ROOT / "configs" / "toyvid.yaml", ["train.recipe=paper"])
    assert (paper.train.reference, paper.train.beta, paper.train.lr) == ("teacher", 5000.0, 1e-4)
    assert paper.hash() != shipped.hash()
    # a frozen config (every key spelled out, the recipe's name beside them) reads back as the same run
    assert config.from_dict(shipped.to_dict()).hash() == shipped.hash()
    with pytest.raises(ConfigError) as e:
        config.load(None, ["train.recipe=papers"])
    assert str(e.value) == "config key 'train.recipe' must be one of '', paper, revised; got 'papers'"


def test_the_paper_recipe_on_toyvid_is_the_demo_before_the_revised_one():
    """The shipped config of before (tests/data/runs_before/toyvid) is today's with the paper's recipe, 4 units per
    stage, no held-out set and the slower sampling of then: a user can still run the demo as it was."""
    before = yaml.safe_load((ROOT / "tests/data/runs_before/toyvid/config.yaml").read_text())
    then = ["train.recipe=paper", "select.k=4", "prompts.heldout=", "model.steps=10", "prompts.eval_count=36",
            "loo.batch_size=36", "curate.max_prompts=32", "train.epochs=4"]
    assert config.load(ROOT / "configs" / "toyvid.yaml", then).hash() == config.from_dict(before).hash()


def test_run_dir_freezes_and_refuses_another_config(tmp_path):
    run = RunDir(tmp_path / "r")
    cfg = config.load(None)
    run.freeze(cfg)
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert config.from_dict(saved).hash() == cfg.hash()
    assert (run.path / "config.sha256").read_text().strip() == cfg.hash()
    run.freeze(config.load(None, ["runtime.progress=false"]))  # same science, fine
    with pytest.raises(ConfigError, match="--run-dir"):
        run.freeze(config.load(None, ["select.k=2"]))


def test_unwritable_run_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot be written"):
        RunDir(blocker / "run").freeze(config.load(None))


def test_checkpointing_choices_and_backbones():
    with pytest.raises(ConfigError, match="'train.checkpointing' must be one of backbone, every_block, none"):
        config.load(None, ["train.checkpointing=some"])
    with pytest.raises(ConfigError, match="videocrafter2 has no checkpointing"):
        config.load(None, ["model.backbone=videocrafter2", "train.checkpointing=every_block"])
    assert config.load(None, ["model.backbone=videocrafter2", "train.checkpointing=none"]).train.checkpointing == "none"
    with pytest.raises(ConfigError, match="'train.compile'.*not videocrafter2"):
        config.load(None, ["model.backbone=videocrafter2", "train.compile=true"])


def float_keys() -> list[str]:
    cfg = config.Config()
    return [f"{section}.{f.name}" for section in cfg.to_dict()
            for f in dataclasses.fields(getattr(cfg, section)) if f.type in (float, "float")]


@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-inf", ".inf", "-.inf"])
def test_non_finite_floats_are_refused_for_every_float_key(value):
    keys = float_keys()
    assert len(keys) > 10  # the float keys were found
    for key in keys:
        with pytest.raises(config.ConfigError, match=f"'{key}' must be a finite number"):
            config.load(None, [f"{key}={value}"])


@pytest.mark.parametrize("overrides, key", [
    (["model.frames=4"], "model.frames"), (["model.height=64"], "model.height"), (["model.fps=8"], "model.fps"),
    (["model.adapter=/x"], "model.adapter"), (["reward.frames=4"], "reward.frames"),
    (["reward.path=/x"], "reward.path"),
    (["reward.fps=2"], "reward.fps"), (["model.backbone=wan2.1", "model.fps=16"], "model.fps"),
    (["model.backbone=videocrafter2", "model.adapter=/x"], "model.adapter"),
    (["reward.name=videoscore", "reward.fps=2"], "reward.fps"),
])
def test_a_key_the_backbone_or_reward_does_not_read_is_refused(overrides, key):
    """It would change the config hash and nothing else (toyvid's clips are 8 frames of 32x32 whatever
    model.frames says; toyvid_score has no weights and reads every frame)."""
    with pytest.raises(ConfigError) as e:
        config.load(None, overrides)
    assert str(e.value).startswith(f"config key '{key}' is ") and "does not read it" in str(e.value)


def test_keys_the_backbone_or_reward_reads_are_accepted():
    config.load(None, ["model.backbone=wan2.1", "model.frames=5", "model.height=16", "model.width=16"])
    config.load(None, ["model.backbone=videocrafter2", "model.fps=8"])
    config.load(None, ["model.backbone=animatediff", "model.adapter=/x", "model.frames=4"])
    config.load(None, ["reward.name=videoreward", "reward.path=/x", "reward.frames=4", "reward.fps=2"])
    config.load(None, ["reward.batch_size=2", "reward.dtype=float32"])  # how to run: not refused
    assert config.load(None, ["model.frames=0"]).hash() == config.load(None).hash()


# --- the validation's exact rules and messages (pinned for mutation testing, docs/testing.md) ---------

def _error(overrides=(), data=None) -> str:
    with pytest.raises(ConfigError) as e:
        config.from_dict(data) if data is not None else config.load(None, list(overrides))
    return str(e.value)


def test_type_errors_name_the_key_and_the_type():
    assert _error(["select.k=four"]) == "config key 'select.k' expects int, got 'four'"
    assert _error(data={"run": {"name": True}}) == "config key 'run.name' expects str, got True"
    assert _error(data={"loo": {"units": 5}}) == "config key 'loo.units' expects a list, got 5"
    assert _error(data={"loo": {"units": ["a", True]}}) == "config key 'loo.units' expects str, got True"
    assert config.load(None, ["loo.units=a,,b"]).loo.units == ["a", "b"]


def test_unknown_keys_and_sections_list_what_there_is():
    assert _error(["run.nme=x"]) == "unknown config key 'run.nme'; run has: name, root, seed"
    assert _error(data={"foo": {}}) == ("unknown config section 'foo'; expected one of: run, model, reward, prompts, "
                                        "loo, select, filter, curate, train, runtime, slurm")
    assert _error(data={"run": 3}) == "config section 'run' must be a mapping of keys, got 3"


def test_override_values():
    assert config.load(None, ["filter.base_url="]).filter.base_url == ""  # empty, not YAML's null
    assert config.load(None, ["slurm.extra=--reservation=x"]).slurm.extra == ["--reservation=x"]  # first '=' splits


def test_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert _file_error(missing) == f"config file {str(missing)!r} does not exist (see configs/ for examples)"
    bad = tmp_path / "bad.yaml"
    bad.write_text("select: [1, 2\n")
    try:
        yaml.safe_load(bad.read_text())
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0]
    assert _file_error(bad) == f"config file {str(bad)!r} is not valid YAML: {first}"
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    assert _file_error(listing) == f"config file {str(listing)!r} must hold a mapping of sections"
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("run: 3\n")
    assert _file_error(scalar, ["run.name=x"]) == "config section 'run' must be a mapping of keys"


def _file_error(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as e:
        config.load(path, list(overrides))
    return str(e.value)


def test_bounds_messages():
    assert _error(["select.k=0"]) == "config key 'select.k' must be at least 1, got 0"
    assert _error(["train.lr=0.0"]) == "config key 'train.lr' must be positive, got 0.0"
    assert _error(["model.frames=-1"]) == "config key 'model.frames' must be 0 or more, got -1"
    assert _error(["curate.alpha=-0.5"]) == "config key 'curate.alpha' must be 0 or more, got -0.5"
    assert config.load(None, ["curate.alpha=0"]).curate.alpha == 0.0


def test_prompt_dropout_is_a_share():
    assert config.load(None, ["train.prompt_dropout=1"]).train.prompt_dropout == 1.0
    assert _error(["train.prompt_dropout=1.5"]) == ("config key 'train.prompt_dropout' is a share of pairs, from 0 to 1; "
                                                    "got 1.5")


def test_videocrafter2_messages():
    assert _error(["model.backbone=videocrafter2", "train.checkpointing=every_block"]) == (
        "config key 'train.checkpointing': every_block is for animatediff, toyvid and wan2.1; "
        "videocrafter2 has no checkpointing: use 'none' or 'backbone'")
    assert _error(["model.backbone=videocrafter2", "train.compile=true"]) == (
        "config key 'train.compile': regional compilation knows the blocks of animatediff, toyvid "
        "and wan2.1, not videocrafter2; set train.compile=false")


def test_executor_and_run_name():
    assert config.load(None, ["runtime.executor=slurm"]).runtime.executor == "slurm"
    assert _error(["runtime.executor=pbs"]) == "config key 'runtime.executor' must be 'local' or 'slurm', got 'pbs'"
    assert _error(["run.name="]) == "config key 'run.name' must be a non-empty name without '/', got ''"
    assert _error(["run.name=a/b"]) == "config key 'run.name' must be a non-empty name without '/', got 'a/b'"


def test_keys_read_messages_say_backbone_or_reward():
    assert _error(["model.fps=8"]) == ("config key 'model.fps' is 8, but the backbone 'toyvid' does not read it (it "
                                       "would change the config hash and nothing else); leave it at 0")
    assert _error(["reward.frames=4"]) == ("config key 'reward.frames' is 4, but the reward 'toyvid_score' does not read "
                                           "it (it would change the config hash and nothing else); leave it at 0")


def test_reads_key_and_a_backbone_registered_in_code_only():
    cfg = config.load(None)
    assert not config.reads_key(cfg, "model", "fps") and config.reads_key(cfg, "model", "steps")
    assert config.reads_key(config.load(None, ["model.backbone=videocrafter2"]), "model", "fps")
    assert not config.reads_key(cfg, "reward", "path") and config.reads_key(cfg, "reward", "batch_size")
    cfg.model.backbone = "custom"  # not in IGNORED_KEYS: not known to read anything, and not checked
    assert not config.reads_key(cfg, "model", "steps")
    config.validate_keys_read(cfg)


@pytest.mark.parametrize("value, bad", [("gpu", False), ("", False), ("a\nb", True), ("a\x7fb", True),
                                        ("a\u2028b", True), ("a\u2029b", True), ("a\u0085b", True), ("\u00e9", False)])
def test_control_characters(value, bad):
    assert config.has_control_chars(value) is bad


def test_slurm_values_are_one_line_sbatch_options():
    assert _error(data={"slurm": {"partition": "a\nb"}}) == ("config key 'slurm.partition' must not contain newlines or control "
                                                "characters, got 'a\\nb'")
    assert config.load(None, ["slurm.extra=--reservation=x,-C,--exclusive"]).slurm.extra == \
        ["--reservation=x", "-C", "--exclusive"]
    msg = "config key 'slurm.extra' holds sbatch options like '--reservation=x' (one line each), got {!r}"
    assert _error(data={"slurm": {"extra": ["reservation"]}}) == msg.format("reservation")
    assert _error(data={"slurm": {"extra": ["--reservation=x\n#SBATCH --x"]}}) == msg.format("--reservation=x\n#SBATCH --x")


@pytest.mark.parametrize("name", ["toyvid", "adaptive", "animatediff"])
def test_run_directories_made_before_keep_their_config_hash(tmp_path, name):
    """A run frozen by the code before this layout (tests/data/runs_before/README.md) is the same run today."""
    import shutil

    from vip.store import RunDir
    old = ROOT / "tests/data/runs_before" / name
    cfg = config.load(old / "config.yaml")
    assert cfg.hash() == (old / "config.sha256").read_text().strip()
    run = RunDir(shutil.copytree(old, tmp_path / name))
    run.freeze(cfg)  # accepted: not "made with another config"
    assert (run.path / "config.sha256").read_text() == (old / "config.sha256").read_text()
