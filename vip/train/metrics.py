"""Per-step training metrics: metrics.jsonl (the record) and TensorBoard (the view). Rank 0 only."""
from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    def __init__(self, directory: Path, resume_step: int, tensorboard: bool = True):
        self.path = Path(directory) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # after a resume, drop the lines past the checkpoint: they will be written again
        if self.path.is_file():
            kept = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self.file = self.path.open("a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(directory) / "tb"), purge_step=resume_step + 1)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(directory: Path) -> list[dict]:
    p = Path(directory) / "metrics.jsonl"
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln] if p.is_file() else []
