"""The README's usage example is run as written."""
import os
import pathlib
import re


def test_readme_example_runs(tmp_path, monkeypatch):
    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    assert os.path.exists(tmp_path / "model.perm")
