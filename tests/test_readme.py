"""The README's usage examples are run as written, in order, as one session."""
import os
import pathlib
import re

import pytest

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()


def test_readme_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 4, "README lost its python examples"
    needs = {"huggingface_hub": "permcodec.integrations.hub", "lightning": "import lightning"}
    for package, marker in needs.items():
        if any(marker in b for b in blocks):
            pytest.importorskip(package)
    monkeypatch.chdir(tmp_path)
    session = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), session)
    assert os.path.exists(tmp_path / "model.perm") and os.path.exists(tmp_path / "out" / "model.perm")
    assert {p.name for p in (tmp_path / "mlp").iterdir()} >= {"model.perm", "config.json"}
    assert session["mlp"].net[0].out_features == 64
    from permcodec.integrations.lightning import PermcodecCheckpoint
    assert any(isinstance(c, PermcodecCheckpoint) for c in session["trainer"].callbacks)


def test_readme_cli_commands_exist():
    from permcodec.cli import parser
    commands = set(parser()._subparsers._group_actions[0].choices)
    used = set(re.findall(r"^permcodec ([a-z-]+)", README, re.M))
    assert used and used <= commands
