"""Event-loop selection shared by every qudag_io adapter.

qudag runs on uvloop when it is importable and on asyncio's default loop otherwise;
tests run the adapters under both (STYLE.md §11).  ``QUDAG_LOOP=asyncio`` forces the
default loop, which is handy when debugging with asyncio's debug mode.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, Awaitable, Callable, TypeVar

__all__ = ["new_event_loop", "run"]

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    if os.environ.get("QUDAG_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a declared dependency
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Callable[[], Awaitable[T]] | Awaitable[T], *, debug: bool = False) -> T:
    """``asyncio.run`` on the qudag loop: ``run(main())`` or ``run(main)``."""
    coro: Any = main() if callable(main) else main
    with asyncio.Runner(loop_factory=new_event_loop, debug=debug) as runner:
        return runner.run(coro)
