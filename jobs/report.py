"""Write a run's report: one self-contained HTML page (figures inlined; mail it as is) and a Markdown copy.

    python jobs/report.py runs/<name>

Writes <run>/report.html, <run>/report.md and the Markdown's figures under <run>/report_files/. Reads the
run's JSON records only (selection, target, curation, training metrics, outcome, prompt filter), never a
model, so it can run at any time: a stage not finished yet is shown as "not yet run".
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vip.cli import fail_cleanly  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="the run directory (what jobs/stage.py --run-dir wrote)")
    args = ap.parse_args(argv)
    with fail_cleanly():
        from vip.report.collect import read_run

        read_run(args.run_dir)  # a bad path fails here, before matplotlib and torch are imported
        from vip.report.build import write_report

        html = write_report(args.run_dir)
    print(f"report: {html}\nmarkdown: {html.with_suffix('.md')} (figures in {html.parent / 'report_files'})")


if __name__ == "__main__":
    main()
