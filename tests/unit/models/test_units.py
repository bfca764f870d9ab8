"""A removed unit is an identity in its slot of the real denoiser, on every backbone family: forward
hooks on the module found at the unit's path in the model's own denoiser (not a stand-in called on
its own) see the slot return exactly what it was given, while a unit is switched off (disabled) and
after it is pruned for good; the unit that was there changes its input. And the pruned student's
saved denoiser is what the pipeline hashes, whatever the family's folder (unet/, transformer/) and
whether the weights are one file or shards."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from helpers.paths import ROOT
from vip import config
from vip.config import ModelConfig
from vip.models.registry import load_video_model
from vip.steps.context import StageContext
from vip.steps.pairs import student_sha256
from vip.store import RunDir, sha256_file

from helpers import tiny_backbones

ROOT_CONFIG = ROOT / "configs" / "toyvid.yaml"
BACKBONES = ["toyvid", "animatediff", "videocrafter2", "wan2.1"]
# where each family's save() puts its denoiser (read off the families' save(), not off the registry)
DENOISER_FOLDER = {"toyvid": "unet", "animatediff": "unet", "videocrafter2": "unet", "wan2.1": "transformer"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with tiny_backbones.one_torch_thread():
        yield


def _overrides(overrides: list[str]) -> dict:
    out = {}
    for o in overrides:
        key, value = o.split("=", 1)
        out[key.removeprefix("model.")] = int(value) if value.isdigit() else value
    return out


@pytest.fixture(scope="module", params=BACKBONES)
def tiny(request, tmp_path_factory):
    """(backbone, model, the model.* overrides that load it again)."""
    name = request.param
    torch.manual_seed(0)
    if name == "toyvid":
        from vip.models.toyvid import build_untrained

        return name, build_untrained(steps=1), ["model.backbone=toyvid"]
    if name == "videocrafter2":
        from vip.models.videocrafter2 import VideoCrafter2Model
        from vip.models.videocrafter2.build import TINY_META, tiny_components

        return name, VideoCrafter2Model(*tiny_components(), TINY_META), ["model.backbone=videocrafter2"]
    root = tmp_path_factory.mktemp(name)
    overrides = tiny_backbones.WRITERS[name](root)
    cfg = ModelConfig(**{**_overrides(overrides), "steps": 1})
    return name, load_video_model(cfg, cfg.path), overrides


def _inputs(model):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(1, *model.latent_shape, generator=g), torch.tensor([500]),
            model.encode_prompts(["a red circle moving left"]))


class SlotRecorder:
    """A forward hook on one module: the hidden states each call got (first argument) and returned."""

    def __init__(self, module: torch.nn.Module):
        self.calls = []
        self.handle = module.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        given = args[0] if args else next(iter(kwargs.values()))
        self.calls.append((given.detach().clone(), output.detach().clone()))

    def remove(self):
        self.handle.remove()


def _run_recorded(model, units: list[str], inputs) -> dict[str, tuple[torch.nn.Module, list]]:
    """One forward of `model` with a recorder on the module at each unit's path of its own denoiser."""
    den = model.trainable_module()
    recs = {u: (den.get_submodule(u), SlotRecorder(den.get_submodule(u))) for u in units}
    try:
        with torch.no_grad():
            model.predict(*inputs)
    finally:
        for _, rec in recs.values():
            rec.remove()
    return {u: (slot, rec.calls) for u, (slot, rec) in recs.items()}


def _assert_identities(name: str, what: str, seen: dict, originals: dict) -> None:
    for unit, (slot, calls) in seen.items():
        assert slot is not originals[unit] and not list(slot.parameters()), f"{name}: {what} {unit} is still the unit"
        assert calls, f"{name}: the {what} slot {unit} is not called by the forward"
        for given, out in calls:
            assert out.shape == given.shape and torch.equal(out, given), f"{name}: {what} {unit} changed its input"


def test_a_removed_units_slot_returns_its_input(tiny):
    name, model, _ = tiny
    inputs = _inputs(model)
    units = model.units()
    assert len(units) >= 3
    full = _run_recorded(model, units, inputs)
    originals = {u: slot for u, (slot, _) in full.items()}
    for unit, (_, calls) in full.items():
        assert calls, f"{name}: {unit} is not called by the forward"
        assert any(not torch.equal(out, given) for given, out in calls), f"{name}: {unit} does nothing to its input"

    # every unit removed at once, then one at a time at either end (the others in place)
    for removed in (units, units[:1], units[-1:]):
        with model.disabled(removed):
            assert not set(removed) & set(model.units())
            _assert_identities(name, "disabled", _run_recorded(model, removed, inputs), originals)
        assert all(model.trainable_module().get_submodule(u) is originals[u] for u in units)  # put back
        student = model.pruned(removed)
        assert not set(removed) & set(student.units())
        _assert_identities(name, "pruned", _run_recorded(student, removed, inputs), originals)


def _stage_context(tmp_path, name: str, overrides: list[str]) -> StageContext:
    cfg = config.load(ROOT_CONFIG, [*overrides, "model.steps=1"])
    return StageContext(RunDir(tmp_path / "run"), cfg, 1)


def test_the_student_hash_reads_the_familys_saved_denoiser(tiny, tmp_path):
    """Before the fix, student_sha256 read unet/diffusion_pytorch_model.safetensors whatever the
    family: a Wan student (transformer/) stopped pair generation with FileNotFoundError."""
    name, model, overrides = tiny
    ctx = _stage_context(tmp_path, name, overrides)
    unit = model.units()[1]
    student = model.pruned([unit])
    student.save(ctx.pruned_path())
    weights = ctx.pruned_path() / DENOISER_FOLDER[name] / "diffusion_pytorch_model.safetensors"
    assert student_sha256(ctx) == sha256_file(weights)

    with torch.no_grad():  # other denoiser weights, another hash
        next(student.trainable_module().parameters()).add_(1.0)
    student.save(ctx.pruned_path())
    assert student_sha256(ctx) == sha256_file(weights)
    assert student_sha256(ctx) != hashlib.sha256(b"").hexdigest()


# not videocrafter2: VideoCrafter2Model.load reads one safetensors file (its save never shards a converted U-Net)
@pytest.mark.parametrize("tiny", [b for b in BACKBONES if b != "videocrafter2"], indirect=True)
def test_a_sharded_denoiser_is_hashed_shard_by_shard(tiny, tmp_path):
    name, model, overrides = tiny
    ctx = _stage_context(tmp_path, name, overrides)
    student = model.pruned(model.units()[:1])
    student.save(ctx.pruned_path())
    folder = ctx.pruned_path() / DENOISER_FOLDER[name]
    for f in folder.glob("diffusion_pytorch_model*"):
        f.unlink()
    size = sum(p.numel() * p.element_size() for p in student.trainable_module().state_dict().values())
    student.trainable_module().save_pretrained(folder, max_shard_size=size // 3)
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2
    first = student_sha256(ctx)
    assert load_video_model(ctx.cfg.model, ctx.pruned_path()).num_params() == student.num_params()  # it loads
    data = bytearray((folder / shards[-1]).read_bytes())
    data[-1] ^= 1  # one bit of the last shard's last tensor
    (folder / shards[-1]).write_bytes(bytes(data))
    assert student_sha256(ctx) != first
