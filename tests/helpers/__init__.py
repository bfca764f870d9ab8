"""Builders and checks shared by the unit, golden and integration tests, and the one place for them:
no test module imports from another. Imported as `helpers.<module>` (tests/ is on sys.path through
tests/conftest.py): tiny_backbones and tiny_rewards (tiny random models in their published layouts),
goldens, gemini_server (a stand-in Gemini HTTP server), slurm and train (the Slurm and training test
plumbing), stage (a small two-stage run), redpo_step, data (data-that-can-differ checks), paths (ROOT)."""
