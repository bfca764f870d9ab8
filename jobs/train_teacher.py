"""Train the embedded toyvid teacher on CPU (once) and write it where the package ships it.

    python jobs/train_teacher.py [--workdir runs/teacher] [--out vip/toyvid/weights/teacher] [key=value ...]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vip.cli import fail_cleanly  # noqa: E402
from vip.config import ConfigError, apply, parse_value  # noqa: E402
from vip.toyvid.teacher import TeacherConfig, train_teacher  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("runs/teacher"))
    ap.add_argument("--out", type=Path, default=Path("vip/toyvid/weights/teacher"))
    ap.add_argument("overrides", nargs="*", help="TeacherConfig fields as key=value")
    args = ap.parse_args()
    cfg = TeacherConfig()
    with fail_cleanly():
        for item in args.overrides:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"teacher override {item!r} must look like key=value (e.g. steps=2400)")
            apply(cfg, "teacher", {key: parse_value(raw)})
    model = train_teacher(cfg, args.workdir)
    model.save(args.out)
    print(f"teacher written to {args.out}")


if __name__ == "__main__":
    main()
