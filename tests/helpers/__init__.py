"""Builders shared by the unit and integration tests: tiny random models and rewards written in
their published layouts (imported as `helpers.<module>`: tests/ is on sys.path through
tests/conftest.py, as tests/integration's modules are through theirs)."""
