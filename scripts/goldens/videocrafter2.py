"""Golden outputs of VideoCrafter2 (AILab-CVC/VideoCrafter, base_512_v2) from the reference lvdm code, on small
random weights in the published model.ckpt layout.

The weights are committed as a recipe, not as tensors: weights.json lists every parameter of lvdm's
LatentDiffusion.state_dict() (published key, shape, kind, float64 sum) and each tensor is
torch.randn(shape, generator=Generator().manual_seed(SEED + crc32(key))) scaled by its kind (materialize()
below; the test has the same function and checks the sums). lvdm hard-codes GroupNorm(32, .) everywhere, and
with 32 channels (one per group) a ResBlock's GroupNorm removes the timestep/fps embedding it has just added
(a per-channel constant), so conditioning shows only from 64 channels on; the smallest such U-Net is over 2 MB
even in float16. The script writes model.ckpt from the recipe into a temporary directory and lvdm loads it
from there (funcs.load_model_checkpoint, strict) before anything runs, so lvdm ran on exactly the tensors the
test materializes.

What runs (all of it lvdm's / open_clip's own code, nothing re-implemented):
  * lvdm.models.ddpm3d.LatentDiffusion, instantiated by utils.utils.instantiate_from_config from
    configs/inference_t2v_512_v2.0.yaml with only sizes changed (below): DDPM.register_schedule (betas,
    alphas_cumprod, ...), the use_scale / scale_b 0.7 signal scale (scale_arr), DiffusionWrapper, apply_model.
  * its U-Net lvdm.modules.networks.openaimodel3d.UNetModel (temporal convs and attention, init_attn, fps_cond,
    use_linear, use_checkpoint as published) at a tiny size.
  * its text encoder lvdm.modules.encoders.condition.FrozenOpenCLIPEmbedder (layer: penultimate) around a tiny
    open_clip CLIP text tower (open_clip_torch 2.22.0, VideoCrafter's requirements.txt pin: its transformer
    is sequence-first, which encode_with_transformer's permute assumes; open_clip 3.x is batch-first and
    would silently attend over the batch).
  * scripts/evaluation/funcs.py: load_model_checkpoint (the golden ckpt is loaded back strictly) and
    batch_ddim_sampling (the published path: uncond = get_learned_conditioning([""] * B) for
    uncond_type empty_seq, cond/uc dicts carrying fps, lvdm.models.samplers.ddim.DDIMSampler with CFG).

Changes to the reference's surroundings, none to its arithmetic:
  * DDIMSampler.register_buffer moves every tensor to CUDA (ddim.py:16-20); here it keeps them on the CPU.
  * open_clip.tokenize is open_clip's own tokenize (tokenizer.py) with context_length 16 over a
    SimpleTokenizer built from the first 100 merges of open_clip's bpe_simple_vocab_16e6.txt.gz (a vocabulary
    of 614, so the token embedding stays tiny). The same vocabulary is written as vocab.json + merges.txt (the
    OpenAI/HF layout of that BPE) for our CLIPTokenizer.
  * first_stage_model is an identity stand-in (the VAE is not part of this golden): its decode returns its
    input; the latents are recorded from DDIMSampler.sample's return value, before decoding.
  * Modules imported at the top of lvdm/funcs files but unused on this path are stubbed in sys.modules:
    torchvision (no build matches torch 2.13.0+cpu here; open_clip imports it for image transforms, ddpm3d for
    make_grid), cv2 (utils/utils.py), decord (funcs.py: video reading), kornia (condition.py: image embedder),
    transformers (condition.py: T5/HF-CLIP embedders).

Noise: the published inference seeds the global RNG (seed_everything(123)) and DDIMSampler draws x_T and every
step's noise from it (ddim.py:145, common.py noise_like). With batch 1, torch.manual_seed(seed) gives the same
stream as our per-sample torch.Generator().manual_seed(seed), so each prompt is sampled by lvdm alone (batch 1)
and our test samples both prompts in one batch; the drawn noise is recorded (pass-through wrappers) and saved.
lvdm draws the step noise even at eta 0 (multiplied by sigma 0); ours does not draw it then, which changes
nothing in the result.

Steps: 5 (divides 1000). lvdm's make_ddim_timesteps (utils_diffusion.py:56-70) takes range(0, 1000, 1000 // S)
+ 1, which for S not dividing 1000 has more than S entries (S=3: 1, 334, 667, 1000 and then indexes
alphas_cumprod[1000], an IndexError; S=30: 31 steps); the script records that S=3 fails.

Venv (throwaway, not ours; the versions it ran with are in SOURCE.json):
    python3 -m venv /work/venvs/lvdm
    /work/venvs/lvdm/bin/pip install torch==2.13.0                    # first: the local CPU wheel
    /work/venvs/lvdm/bin/pip install einops==0.8.2 omegaconf==2.4.0 pytorch_lightning==2.6.6 safetensors==0.8.0 \
        ftfy==6.3.1 regex tqdm pyyaml
    /work/venvs/lvdm/bin/pip install --no-deps open_clip_torch==2.22.0  # its torchvision dependency would pull
                                                                        # torch 2.14 (a CUDA build of torchvision)
    pip list must show torch 2.13.0+cpu and no torchvision (the script stubs it).
Run (from the repository root; the checkout: fetch github:AILab-CVC/VideoCrafter, git worktree add):
    /work/venvs/lvdm/bin/python scripts/goldens/videocrafter2.py --videocrafter /work/refs/videocrafter \
        --out tests/goldens/videocrafter2

Writes tests/goldens/videocrafter2/:
  weights.json         the parameters' recipe: seed, and per published key (model.diffusion_model.*,
                       cond_stage_model.model.*) shape, kind and float64 sum
  buffers.safetensors  LatentDiffusion's schedule buffers (betas, alphas_cumprod, ..., scale_arr) as lvdm
                       registers them, for the checkpoint
  tokenizer/           vocab.json + merges.txt of the tiny BPE
  settings.json        the tiny config, prompts, seeds, steps, guidance, fps, shapes
  outputs.safetensors  token ids, text embeddings, the forwards' inputs and eps, q_sample's inputs and output, the initial
                       noise and the step noises per prompt, per prompt and eta each step's input latents (eta 1)
                       and the final latents, lvdm's DDIM timesteps
  SOURCE.json          reference, versions, commit, command, date
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import importlib.abc
import importlib.machinery
import json
import math
import re
import subprocess
import sys
import tempfile
import types
import zlib
from functools import partial
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

PROMPTS = ["a cat plays the piano in the style of van gogh, oil on canvas", "A Dog!"]  # the first is truncated
TOKENIZER_PROMPTS = PROMPTS + ["", "  hello   world ", "it's ON the table... (really)", "day4 of 10 days, 2x!!",
                               "it\u2019s \u201cquoted\u201d, rock &amp; roll"]  # open_clip's basic_clean: ftfy, html
SEEDS = [123, 7]  # 123: the published run_text2video.sh --seed
STEPS, GUIDANCE, FPS = 5, 12.0, 28  # guidance and fps as published (scripts/run_text2video.sh)
FRAMES, LATENT = 4, 8
CONTEXT_LENGTH, MERGES = 16, 100
WEIGHT_SEED = 20240101
# configs/inference_t2v_512_v2.0.yaml unet_config.params, sizes shrunk (lvdm hard-codes GroupNorm(32, ...), so
# every width is a multiple of 32); everything else as published.
# attention_resolutions [2, 1] over 3 levels: attention on all but the deepest level, and in the middle block (as
# published: 4 levels, attention at 1, 2, 4, none at 8); 64 channels from level 1 on (see the docstring).
TINY_UNET = dict(model_channels=32, attention_resolutions=[2, 1], num_res_blocks=2, channel_mult=[1, 2, 2],
                 num_head_channels=16, context_dim=16, temporal_length=FRAMES)
# open_clip ViT-H-14.json's shape at a tiny size (the visual tower is built and deleted, as lvdm does)
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 256 * 2 + MERGES + 2, "width": 16,
                          "heads": 2, "layers": 3}}
STUBBED = ("torchvision", "cv2", "decord", "kornia", "transformers")


# ---------------------------------------------------------------- stubs for unused imports
class _Anything:
    def __init__(self, *a, **k):
        pass

    def __call__(self, *a, **k):
        return _Anything()

    def __getattr__(self, name):
        return _Anything()

    def __mro_entries__(self, bases):
        return (object,)


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


# ---------------------------------------------------------------- the weights' recipe
def kinds(module: nn.Module, prefix: str = "") -> dict[str, str]:
    """Each parameter's kind: a norm's weight, a matrix (>= 2 dims), or a vector (biases, norm biases, scalars).
    Every parameter is random (lvdm zero-inits proj_out, out, out_layers' conv and the temporal conv4, which
    would hide those paths)."""
    norms = {id(m) for m in module.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))}
    out = {}
    for mname, mod in module.named_modules():
        for name, p in mod.named_parameters(recurse=False):
            key = prefix + (f"{mname}.{name}" if mname else name)
            out[key] = "norm_weight" if id(mod) in norms and name == "weight" else ("matrix" if p.dim() >= 2 else "vector")
    return out


def materialize(key: str, shape: list[int], kind: str, seed: int) -> torch.Tensor:
    """One parameter of the recipe (the test has the same function): N(0, 1) from a generator seeded by the key,
    then a norm's weight 1 + 0.1 r, a matrix r / sqrt(fan_in), a vector 0.1 r."""
    r = torch.randn(shape, generator=torch.Generator().manual_seed(seed + zlib.crc32(key.encode())))
    if kind == "norm_weight":
        return 1 + 0.1 * r
    if kind == "matrix":
        return r / math.sqrt(math.prod(shape[1:]))
    return 0.1 * r


def tiny_tokenizer(out_dir: Path, tmp: Path):
    """SimpleTokenizer over the first MERGES merges of open_clip's BPE, and the same vocabulary written as
    vocab.json + merges.txt (the OpenAI/HF layout, where the specials are <|startoftext|> / <|endoftext|>)."""
    import open_clip
    from open_clip import tokenizer as oct

    lines = gzip.open(oct.default_bpe()).read().decode("utf-8").split("\n")
    head, merges = lines[0], lines[1:1 + MERGES]
    bpe = tmp / "tiny_bpe.txt.gz"
    with gzip.open(bpe, "wb") as f:  # no trailing newline: SimpleTokenizer would read an empty merge
        f.write("\n".join([head] + merges).encode("utf-8"))
    tok = oct.SimpleTokenizer(str(bpe))
    assert tok.vocab_size == TINY_CLIP["text_cfg"]["vocab_size"], tok.vocab_size
    oct._tokenizer = tok
    open_clip.tokenize = partial(oct.tokenize, context_length=CONTEXT_LENGTH)

    hf_names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {hf_names.get(k, k): v for k, v in tok.encoder.items()}
    (out_dir / "tokenizer").mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer" / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n")
    (out_dir / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return tok


class IdentityFirstStage(nn.Module):
    """Stand-in for lvdm's AutoencoderKL (not compared here)."""

    def decode(self, z, **kwargs):
        return z


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videocrafter", type=Path, required=True, help="a checkout of AILab-CVC/VideoCrafter")
    p.add_argument("--out", type=Path, default=Path("tests/goldens/videocrafter2"))
    args = p.parse_args()
    vc = args.videocrafter.resolve()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(vc), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()

    import pytorch_lightning  # noqa: F401  (real; imported before the stubs so it sees no fake torchvision)

    sys.meta_path.insert(0, _StubFinder())
    sys.path[:0] = [str(vc), str(vc / "scripts" / "evaluation")]
    import open_clip
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    import funcs  # scripts/evaluation/funcs.py
    import lvdm.models.samplers.ddim as ddim
    from lvdm.models.utils_diffusion import make_ddim_timesteps
    from utils.utils import instantiate_from_config

    torch.set_grad_enabled(False)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "vc2-tiny-text.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp)
    tiny_tokenizer(out, tmp)

    # ---- the published config, tiny sizes
    config = OmegaConf.load(vc / "configs" / "inference_t2v_512_v2.0.yaml")
    mc = config.model
    for k, v in TINY_UNET.items():
        mc.params.unet_config.params[k] = v
    mc.params.first_stage_config = OmegaConf.create({"target": "__main__.IdentityFirstStage"})
    mc.params.cond_stage_config.params["arch"] = "vc2-tiny-text"
    mc.params.cond_stage_config.params["device"] = "cpu"
    model = instantiate_from_config(mc)
    unet = model.model.diffusion_model
    kind = kinds(model)
    sd = model.state_dict()
    assert set(kind) <= set(sd) and not [k for k in kind if not k.startswith(("model.diffusion_model.",
                                                                                "cond_stage_model.model."))]
    recipe = {"seed": WEIGHT_SEED, "tensors": {}}
    ckpt = {}
    for key, value in sd.items():
        if key in kind:
            t = materialize(key, list(value.shape), kind[key], WEIGHT_SEED)
            recipe["tensors"][key] = [list(value.shape), kind[key], t.double().sum().item()]
            ckpt[key] = t
        else:
            ckpt[key] = value.clone()  # the schedule buffers
    buffers = {k: v for k, v in ckpt.items() if k not in kind}
    torch.save({"state_dict": ckpt}, tmp / "model.ckpt")
    # as a user of the reference would: the published loader, strict
    funcs.load_model_checkpoint(model, str(tmp / "model.ckpt"))
    model.eval()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ckpt.items())
    (out / "weights.json").write_text(json.dumps(recipe, indent=0) + "\n")
    save_file(buffers, out / "buffers.safetensors")

    res: dict[str, torch.Tensor] = {}
    # ---- tokenizer and text tower
    res["token_ids"] = open_clip.tokenize(TOKENIZER_PROMPTS)
    res["text_cond"] = model.get_learned_conditioning(PROMPTS).float()
    res["text_uncond"] = model.get_learned_conditioning([""]).float()

    # ---- one U-Net forward (per-sample t and fps)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, FRAMES, LATENT, LATENT, generator=g)
    t = torch.tensor([981, 17])
    fps = torch.tensor([FPS, 8])
    res.update(fwd_x=x, fwd_t=t, fwd_fps=fps, fwd_context=res["text_cond"])
    res["fwd_eps"] = model.apply_model(x, t, {"c_crossattn": [res["text_cond"]], "fps": fps}).float()
    # fps as a python int (UNetModel.forward's type(fps) == int branch): sample 1 differs from fwd_eps by its fps only
    res["fwd_eps_int_fps"] = unet(x, t, context=res["text_cond"], fps=FPS).float()
    # another timestep, the same fps
    res["fwd_eps_t501"] = unet(x, torch.tensor([501, 501]), context=res["text_cond"], fps=fps).float()

    # ---- the forward process (LatentDiffusion.q_sample with use_scale): what training noises with
    qx0 = torch.randn(4, 4, FRAMES, LATENT, LATENT, generator=g)
    qnoise = torch.randn(qx0.shape, generator=g)
    qt = torch.tensor([0, 250, 399, 700])  # both sides of scale_mid_step 400
    res.update(q_x0=qx0, q_noise=qnoise, q_t=qt, q_sample=model.q_sample(qx0, qt, noise=qnoise))

    # ---- DDIM: the published sampling path, one prompt at a time
    ddim.DDIMSampler.register_buffer = lambda self, name, attr: setattr(self, name, attr)  # CPU, not CUDA
    rec: dict[str, list] = {"noise": [], "x": [], "samples": []}
    orig_noise_like, orig_p, orig_sample = ddim.noise_like, ddim.DDIMSampler.p_sample_ddim, ddim.DDIMSampler.sample

    def noise_like(*a, **k):
        n = orig_noise_like(*a, **k)
        rec["noise"].append(n.clone())
        return n

    def p_sample_ddim(self, x, *a, **k):
        rec["x"].append(x.clone())
        return orig_p(self, x, *a, **k)

    def sample(self, *a, **k):
        s = orig_sample(self, *a, **k)
        rec["samples"].append(s[0].clone())
        return s

    ddim.noise_like, ddim.DDIMSampler.p_sample_ddim, ddim.DDIMSampler.sample = noise_like, p_sample_ddim, sample
    shape = [1, model.channels, FRAMES, LATENT, LATENT]
    for eta in (1.0, 0.0):
        for i, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS)):
            for v in rec.values():
                v.clear()
            torch.manual_seed(seed)
            cond = {"c_crossattn": [model.get_learned_conditioning([prompt])],
                    "fps": torch.tensor([FPS]).long()}
            frames = funcs.batch_ddim_sampling(model, cond, shape, 1, STEPS, eta, GUIDANCE)
            assert torch.equal(frames[:, 0], 1. / model.scale_factor * rec["samples"][0])
            assert len(rec["x"]) == len(rec["noise"]) == STEPS
            tag = f"eta{eta:g}_{i}"
            res[f"latents_{tag}"] = rec["samples"][0].float()
            if eta == 1.0:
                res[f"steps_{tag}"] = torch.cat(rec["x"])  # each step's input latents, x_T first
            noise = torch.cat([rec["x"][0]] + rec["noise"])  # x_T, then each step's z
            stream = torch.Generator().manual_seed(seed)  # our per-sample generator: the same stream
            assert torch.equal(noise, torch.cat([torch.randn(shape, generator=stream) for _ in range(STEPS + 1)]))
            res[f"noise_{i}"] = noise  # the same for both etas (lvdm draws z at eta 0 too)
    res["ddim_timesteps"] = torch.from_numpy(make_ddim_timesteps("uniform", STEPS, 1000, verbose=False).copy())
    try:
        sampler = ddim.DDIMSampler(model)
        sampler.make_schedule(3, ddim_eta=1.0, verbose=False)
        three_steps = f"make_schedule(3) ran: {len(sampler.ddim_timesteps)} timesteps {sampler.ddim_timesteps.tolist()}"
    except IndexError as e:
        three_steps = (f"IndexError ({e}): make_ddim_timesteps('uniform', 3, 1000) = "
                       f"{make_ddim_timesteps('uniform', 3, 1000, verbose=False).tolist()}")

    res = {k: v.contiguous().clone() for k, v in res.items()}
    save_file(res, out / "outputs.safetensors")
    # the published sampling defaults: scripts/run_text2video.sh's flags, frames = the config's temporal_length
    sh = (vc / "scripts" / "run_text2video.sh").read_text()
    flag = lambda name: re.search(rf"--{name}\s+(\S+)", sh)[1]  # noqa: E731
    published = dict(frames=int(OmegaConf.load(vc / "configs" / "inference_t2v_512_v2.0.yaml")
                                .model.params.unet_config.params.temporal_length),
                     height=int(flag("height")), width=int(flag("width")), fps=int(flag("fps")),
                     steps=int(flag("ddim_steps")), guidance=float(flag("unconditional_guidance_scale")),
                     eta=float(flag("ddim_eta")), seed=int(flag("seed")))
    settings = dict(published=published, prompts=PROMPTS, tokenizer_prompts=TOKENIZER_PROMPTS, seeds=SEEDS, steps=STEPS,
                    guidance=GUIDANCE, fps=FPS, frames=FRAMES, latent=LATENT, context_length=CONTEXT_LENGTH,
                    unet=dict(mc.params.unet_config.params), clip=TINY_CLIP, open_clip_layers=3,
                    scale_factor=model.scale_factor, uncond_type=model.uncond_type,
                    ddim_timesteps=res["ddim_timesteps"].tolist(), three_steps=three_steps)
    (out / "settings.json").write_text(json.dumps(OmegaConf.to_container(OmegaConf.create(settings)), indent=1) + "\n")
    source = {
        "reference": "AILab-CVC/VideoCrafter lvdm (VideoCrafter2, configs/inference_t2v_512_v2.0.yaml): "
                     "LatentDiffusion + openaimodel3d.UNetModel + FrozenOpenCLIPEmbedder (penultimate) + "
                     "DDIMSampler via scripts/evaluation/funcs.py batch_ddim_sampling; tiny sizes, random weights",
        "repo": "https://github.com/AILab-CVC/VideoCrafter",
        "commit": commit,
        "versions": {n: version(n) for n in ("torch", "open_clip_torch", "pytorch_lightning", "einops",
                                              "omegaconf", "numpy", "safetensors", "ftfy")},
        "python": sys.version.split()[0],
        "stubbed_unused_imports": list(STUBBED),
        "changes": ["DDIMSampler.register_buffer keeps tensors on the CPU (ddim.py:16-20 moves them to CUDA)",
                    "open_clip.tokenize = open_clip's tokenize(context_length=16) over a SimpleTokenizer of the "
                    f"first {MERGES} merges of bpe_simple_vocab_16e6.txt.gz",
                    "first_stage_model: an identity stand-in (VAE not compared)",
                    "all parameters random (no zero-init), from the recipe in weights.json"],
        "command": "python scripts/goldens/videocrafter2.py " + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
    }
    (out / "SOURCE.json").write_text(json.dumps(source, indent=1) + "\n")
    print(three_steps)
    for k, v in res.items():
        print(f"{k:24s} {tuple(v.shape)} {v.float().abs().max().item():.4g}")


if __name__ == "__main__":
    main()
