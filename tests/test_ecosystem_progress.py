"""Progress bars: on stderr after a delay, off in non-interactive use unless asked."""
import io
import subprocess
import sys
import time

import pytest

from permcodec import progress
from permcodec.errors import PermcodecError


def _run(wanted, delay, seconds, monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with progress.bar(1000, "load", wanted, delay=delay) as b:
        for _ in range(4):
            time.sleep(seconds / 4)
            b.update(250)
    return err.getvalue()


def test_a_bar_appears_when_asked_and_the_job_is_long(monkeypatch):
    out = _run(True, 0.2, 0.6, monkeypatch)
    assert "load: 100%" in out and "1.00k/1.00k" in out


def test_no_bar_for_short_jobs_or_when_not_asked(monkeypatch):
    assert _run(True, 5.0, 0.05, monkeypatch) == ""      # shorter than the delay
    assert _run(False, 0.0, 0.05, monkeypatch) == ""
    assert _run(None, 0.0, 0.05, monkeypatch) == ""      # StringIO is not a terminal


def test_environment_asks_and_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("PERMCODEC_PROGRESS", "1")
    assert "load" in _run(None, 0.0, 0.05, monkeypatch)
    monkeypatch.setenv("PERMCODEC_PROGRESS", "0")
    assert _run(None, 0.0, 0.05, monkeypatch) == ""
    with pytest.raises(PermcodecError, match="progress must be True, False or None"):
        with progress.bar(1, "x", "yes"):
            pass


def test_non_interactive_process_prints_no_bar():
    code = ("import time; from permcodec import progress\n"
            "with progress.bar(10, 'save', delay=0) as b:\n  time.sleep(0.1); b.update(10)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == ""
