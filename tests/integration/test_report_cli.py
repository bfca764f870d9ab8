"""jobs/report.py through its CLI (moved from the unit tests)."""
import subprocess
import sys

import pytest

from helpers.paths import ROOT
from vip.config import ConfigError
from vip.report.collect import read_run


def test_not_a_run_directory_is_one_line_and_exit_2(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_run(tmp_path / "nowhere")
    r = subprocess.run([sys.executable, str(ROOT / "jobs/report.py"), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "not a run directory" in r.stderr
    assert not (tmp_path / "report.html").exists()
