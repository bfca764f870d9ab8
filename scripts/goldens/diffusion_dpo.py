"""Golden outputs of the Diffusion-DPO loss from the Salesforce trainer's own code.

The loss lives inside train.py's training loop, so this script cuts the published lines out of a
checkout (from `model_losses = (model_pred - target)...` to `loss = -1 * F.logsigmoid(...)`),
and executes them verbatim on fixed tensors, with `ref_unet` answering the frozen reference's
prediction. Nothing of ours is imported. tests/goldens/test_golden_diffusion_dpo.py compares
vip.redpo.redpo_loss with the result.

Environment (the extracted lines need only torch; train.py's other pins do not take part):
    python3 -m venv /work/venvs/dpo-ref && /work/venvs/dpo-ref/bin/pip install torch==2.13.0 numpy safetensors
Reference checkout: github.com/SalesforceAIResearch/DiffusionDPO (any clone; its commit is recorded).
    /work/venvs/dpo-ref/bin/python scripts/goldens/diffusion_dpo.py --ref /path/to/DiffusionDPO
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[2] / "tests" / "goldens" / "diffusion_dpo"
FIRST = "model_losses = (model_pred - target).pow(2).mean(dim=[1,2,3])"
LAST = "loss = -1 * F.logsigmoid(inside_term).mean()"
BETAS = (5000.0, 500.0, 2.5)


def published_loss_block(train_py: Path) -> str:
    lines = train_py.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == FIRST)
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == LAST)
    return textwrap.dedent("\n".join(lines[start:end + 1]))


class FrozenReference:
    """Stands in for ref_unet: returns the fixed reference prediction, as `.sample`."""

    def __init__(self, pred):
        self.pred = pred

    def __call__(self, *args, **kwargs):
        return SimpleNamespace(sample=self.pred)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", required=True, type=Path, help="a checkout of SalesforceAIResearch/DiffusionDPO")
    args = ap.parse_args()
    block = published_loss_block(args.ref / "train.py")
    commit = subprocess.run(["git", "-C", str(args.ref), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    g = torch.Generator().manual_seed(0)
    lbs = 6  # pairs; the trainer stacks winners then losers: (2 * LBS) x 4 x h x w
    target = torch.randn(2 * lbs, 4, 8, 8, generator=g)
    model_pred = target + 0.3 * torch.randn(2 * lbs, 4, 8, 8, generator=g)
    ref_pred = target + 0.3 * torch.randn(2 * lbs, 4, 8, 8, generator=g)
    tensors = {"model_pred": model_pred, "ref_pred": ref_pred, "target": target}
    results = {}
    for beta in BETAS:
        scope = {"torch": torch, "F": F, "model_pred": model_pred, "target": target,
                 "ref_unet": FrozenReference(ref_pred), "model_batch_args": (), "added_cond_kwargs": None,
                 "args": SimpleNamespace(beta_dpo=beta)}
        exec(block, scope)  # noqa: S102 - the reference's own lines
        results[str(beta)] = {"loss": scope["loss"].item(), "implicit_acc": scope["implicit_acc"].item(),
                              "raw_model_loss": scope["raw_model_loss"].item(),
                              "raw_ref_loss": scope["raw_ref_loss"].item()}
        tensors[f"inside_term_beta{beta:g}"] = scope["inside_term"].contiguous()
    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "tensors.safetensors"))
    (OUT / "outputs.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "SOURCE.json").write_text(json.dumps({
        "reference": "SalesforceAIResearch/DiffusionDPO train.py (loss block, executed verbatim)",
        "commit": commit, "lines": f"{FIRST} ... {LAST}",
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "command": "python scripts/goldens/diffusion_dpo.py --ref <DiffusionDPO checkout>",
        "date": datetime.date.today().isoformat()}, indent=2) + "\n")
    print(f"wrote {OUT}: {json.dumps(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
