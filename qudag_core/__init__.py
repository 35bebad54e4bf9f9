"""qudag_core: sans-IO protocol objects for the qudag post-quantum overlay.

Nothing in this package opens a socket, reads a clock or draws global randomness:
time and random bytes are passed in by the caller (see ``../shared/STYLE.md`` §1).

The same sources run compiled (Cython, plus the C kernels in ``csrc/``) or
interpreted.  ``QUDAG_NO_EXTENSIONS=1`` in the environment forces the interpreted
build even when compiled modules sit beside the sources; ``COMPILED`` says which
build is running.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

__all__ = ["COMPILED", "PURE_FORCED", "compiled_modules"]

PURE_FORCED: bool = os.environ.get("QUDAG_NO_EXTENSIONS") == "1"


class _PureSourceFinder(importlib.abc.MetaPathFinder):
    """Resolve ``qudag_core.*`` to ``.py`` sources only, skipping built extensions."""

    def find_spec(self, fullname, path, target=None):  # type: ignore[override]
        if not fullname.startswith(__name__ + ".") or path is None:
            return None
        for entry in path:
            finder = importlib.machinery.FileFinder(
                entry, (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES)
            )
            spec = finder.find_spec(fullname, target)
            if spec is not None:
                return spec
        # C kernels (qudag_core._name) have no source: report them missing so the
        # callers take their pure fallback.
        leaf = fullname.rsplit(".", 1)[1]
        if leaf.startswith("_") and not leaf.startswith("__"):
            raise ModuleNotFoundError(f"{fullname} disabled by QUDAG_NO_EXTENSIONS=1", name=fullname)
        return None


if PURE_FORCED and not any(isinstance(f, _PureSourceFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _PureSourceFinder())

from qudag_core import _build  # noqa: E402

COMPILED: bool = _build.COMPILED


def compiled_modules() -> dict[str, bool]:
    """Map every importable ``qudag_core`` module to whether it loaded compiled."""
    import importlib
    import pkgutil

    out: dict[str, bool] = {}
    for info in pkgutil.walk_packages(__path__, __name__ + "."):
        try:
            mod = importlib.import_module(info.name)
        except ModuleNotFoundError:
            continue
        if info.ispkg:
            continue
        out[info.name] = not (getattr(mod, "__file__", "") or "").endswith(".py")
    return out
