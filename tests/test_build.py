"""Guard: the test suite runs against the compiled build unless the pure one was asked for."""
from __future__ import annotations

import os
import pathlib

import pytest

import qudag_core

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _expected_compiled() -> list[str]:
    mods = []
    for p in sorted((ROOT / "qudag_core").rglob("*.py")):
        if p.name == "__init__.py":
            continue
        rel = p.relative_to(ROOT).with_suffix("")
        mods.append(".".join(rel.parts))
    return mods


def _expected_kernels() -> list[str]:
    return [f"qudag_core._{p.stem}" for p in sorted((ROOT / "csrc").glob("*.c"))]


@pytest.mark.skipif(qudag_core.PURE_FORCED, reason="QUDAG_NO_EXTENSIONS=1: pure build requested")
def test_compiled_build_loaded():
    import importlib

    assert qudag_core.COMPILED, "compiled qudag_core did not load: run `make install` (a C compiler is needed)"
    for name in _expected_compiled():
        mod = importlib.import_module(name)
        assert not mod.__file__.endswith(".py"), f"{name} loaded from source, not compiled"
    for name in _expected_kernels():
        mod = importlib.import_module(name)
        assert mod.__file__.endswith(".so"), name


def test_pure_build_when_forced(tmp_path):
    """QUDAG_NO_EXTENSIONS=1 must load every module from source, even beside built ones."""
    import subprocess
    import sys

    code = (
        "import importlib, qudag_core, sys\n"
        f"mods = {(_expected_compiled())!r}\n"
        "for m in mods:\n"
        "    assert importlib.import_module(m).__file__.endswith('.py'), m\n"
        "assert not qudag_core.COMPILED\n"
        f"for k in {(_expected_kernels())!r}:\n"
        "    try:\n"
        "        importlib.import_module(k)\n"
        "    except ModuleNotFoundError:\n"
        "        pass\n"
        "    else:\n"
        "        sys.exit('kernel loaded in pure mode: ' + k)\n"
        "print('pure ok')\n"
    )
    env = dict(os.environ, QUDAG_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pure ok" in out.stdout
