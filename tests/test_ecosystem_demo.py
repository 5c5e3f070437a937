"""scripts/demo installs only what the demo needs, and a second run installs nothing."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent.parent
DEMO = ROOT / "scripts" / "demo"


def test_demo_installs_the_train_extra_only():
    text = DEMO.read_text()
    assert '-e ".[train]"' in text and "[dev]" not in text and "triton" not in text
    assert "--progress-bar on" in text and "scripts/setup" not in text


def test_a_ready_environment_is_not_reinstalled(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    stamp = subprocess.run("cat pyproject.toml setup.py csrc/* 2>/dev/null | sha256sum | cut -d' ' -f1", shell=True,
                           cwd=ROOT, capture_output=True, text=True).stdout
    (venv / ".demo-ready").write_text(stamp)
    res = subprocess.run(["bash", str(DEMO), "--help"], capture_output=True, text=True,
                         env={**os.environ, "PERMCODEC_VENV": str(venv)})
    assert res.returncode == 0, res.stderr
    assert "usage: python -m trainers" in res.stdout and "[demo] installing" not in res.stdout + res.stderr
