"""The notebooks are the source of truth: the library, the README and clean notebooks must follow them."""
import shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name):
    exe = BIN/name
    if not exe.exists(): pytest.skip(f'{name} is not installed (make install-dev)')
    return str(exe)


def _copy_project(tmp_path):
    for name in ('settings.ini', 'setup.py'): shutil.copy(ROOT/name, tmp_path/name)
    shutil.copytree(ROOT/'nbs', tmp_path/'nbs')
    shutil.copytree(ROOT/'synthkit', tmp_path/'synthkit', ignore=shutil.ignore_patterns('__pycache__'))
    return tmp_path


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file() and '__pycache__' not in p.parts}


def test_export_leaves_no_diff(tmp_path):
    proj = _copy_project(tmp_path)
    subprocess.run([_tool('nbdev_export')], cwd=proj, check=True, capture_output=True)
    before, after = _tree(ROOT/'synthkit'), _tree(proj/'synthkit')
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f'nbdev_export changes {changed}: edit the notebook, run `make sync`, commit both'


def test_notebooks_are_clean(tmp_path):
    proj = _copy_project(tmp_path)
    subprocess.run([_tool('nbdev_clean')], cwd=proj, check=True, capture_output=True)
    before, after = _tree(ROOT/'nbs'), _tree(proj/'nbs')
    changed = sorted(k for k in before if before[k] != after.get(k))
    assert not changed, f'nbdev_clean changes {changed}: run `make sync` before committing'


def test_readme_matches_index_notebook():
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'make_readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
