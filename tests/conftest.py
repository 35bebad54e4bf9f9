"""Shared test fixtures.

* ``vectors_dir``: ``../shared/vectors`` from the project root; tests that need it skip
  with that reason when it is absent (CI always has it, see ``tests/test_vectors_present``).
* ``vector_count``: ``vector_count("wycheproof mlkem_768_test.json", n)`` records how many
  external cases a test checked; the totals are printed at the end of the run.
* ``rng``: a deterministic ``rng(n) -> bytes`` for sans-IO cores.
* ``run_loop``: run a coroutine on asyncio's default loop and on uvloop (parametrized).
"""
from __future__ import annotations

import os
import pathlib
from collections import Counter

import asyncio

import pytest
import uvloop
from testutil import DeterministicRng

ROOT = pathlib.Path(__file__).resolve().parent.parent
VECTORS = ROOT.parent / "shared" / "vectors"
_COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="session")
def vectors_dir() -> pathlib.Path:
    if not VECTORS.is_dir():
        pytest.skip(f"external vectors not found at {VECTORS} (CI has them there)")
    return VECTORS


@pytest.fixture
def vector_count():
    def record(name: str, n: int) -> None:
        assert n > 0, f"{name}: no vector cases were checked"
        _COUNTS[name] += n

    return record


@pytest.fixture
def rng() -> DeterministicRng:
    return DeterministicRng()


def pytest_report_header(config):
    import qudag_core

    return [f"qudag_core.COMPILED={qudag_core.COMPILED} (QUDAG_NO_EXTENSIONS={os.environ.get('QUDAG_NO_EXTENSIONS', '')})"]


def pytest_terminal_summary(terminalreporter):
    if not _COUNTS:
        return
    terminalreporter.section("external vector cases checked")
    for name in sorted(_COUNTS):
        terminalreporter.write_line(f"{_COUNTS[name]:6d}  {name}")


# Adapter tests run under asyncio's default loop and under uvloop (STYLE.md §11).
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run_loop(request):
    """``run_loop(coro_fn, timeout)`` runs ``coro_fn()`` to completion on the chosen loop,
    bounded in time."""

    def run(coro_fn, timeout: float = 60.0):
        async def bounded():
            return await asyncio.wait_for(coro_fn(), timeout)

        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            return runner.run(bounded())

    run.kind = request.param
    return run
