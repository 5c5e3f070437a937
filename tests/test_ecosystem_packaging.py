"""Packaging: what an install puts into site-packages, the license, the extras, lazy imports."""
import ast
import pathlib
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The pure-Python part of an install, as setuptools lays it out from pyproject.toml."""
    out = tmp_path_factory.mktemp("build_py")
    res = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(out)], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return out


def test_install_has_no_top_level_trainers(built):
    assert sorted(p.name for p in built.iterdir()) == ["permcodec", "permcodec_trainers"]
    assert (built / "permcodec_trainers" / "laperm.py").exists()
    assert (built / "permcodec" / "py.typed").exists()
    assert (built / "permcodec" / "integrations" / "hub.py").exists()
    code = "import permcodec_trainers.cli, permcodec_trainers.instruments; print(permcodec_trainers.LaPerm.__module__)"
    res = subprocess.run([sys.executable, "-c", code], cwd=built, capture_output=True, text=True)
    assert res.stdout.strip() == "permcodec_trainers.laperm", res.stderr


def test_trainers_import_each_other_relatively():
    for path in (ROOT / "trainers").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "trainers" for a in node.names), path
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert (node.module or "").split(".")[0] != "trainers", path


def test_python_m_trainers_still_runs_from_the_repository():
    res = subprocess.run([sys.executable, "-m", "trainers", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and "usage: python -m trainers" in res.stdout, res.stderr


def test_license_matches_pyproject():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    head = (ROOT / "LICENSE").read_text().split()
    assert head[:4] == ["Apache", "License", "Version", "2.0,"]


def test_integration_extras_are_declared_and_in_dev():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra, package in (("hub", "huggingface_hub"), ("lightning", "lightning"), ("accelerate", "accelerate"),
                           ("progress", "tqdm")):
        assert any(r.startswith(package) for r in extras[extra]), extra
        assert any(r.startswith(package) for r in extras["dev"]), extra


def test_import_permcodec_imports_neither_torch_nor_numba():
    code = ("import sys, permcodec\n"
            "assert 'torch' not in sys.modules and 'numba' not in sys.modules, 'eager import'\n"
            "permcodec.PermcodecError, permcodec.__version__\n"
            "assert 'torch' not in sys.modules\n"
            "permcodec.save\n"
            "assert 'torch' in sys.modules\n"
            "assert permcodec.open is permcodec.api.open_file and permcodec.Rule is permcodec.rules.Rule\n"
            "assert set(permcodec.__all__) <= set(dir(permcodec))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_unknown_attribute_is_an_attribute_error():
    import permcodec
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        permcodec.nope


def test_every_subpackage_is_installed():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "permcodec").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
