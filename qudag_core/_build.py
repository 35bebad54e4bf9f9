"""Build marker: compiled by Cython like every core module, so its ``__file__`` says
whether the compiled build is the one that loaded."""
from __future__ import annotations

COMPILED: bool = not __file__.endswith(".py")
