"""Benchmarks (not tests): commands that print the figures in docs/benchmarks.md, with the real-size
model builders (random weights), FLOP and MFU accounting and the stand-in reward they use.
No product module imports this package. `python -m vip.bench --help` lists the commands (vip/bench/cli.py).
The Slurm orchestration's benchmark lives with the Slurm code, vip/orchestrate/bench_slurm.py, since only
vip/orchestrate/ may import it."""
