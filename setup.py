"""Build qudag: Cython-compile the sans-IO cores and build the C kernels.

Conventions (so that adding a module never means editing this file):

* Every ``qudag_core/**/*.py`` except ``__init__.py`` is compiled with Cython in
  pure-Python mode; a sibling ``.pxd`` adds C types.  A module that must stay
  interpreted is listed in ``PURE_ONLY`` with the reason.
* Every ``csrc/<name>.c`` is a CPython extension module ``qudag_core._<name>``
  linked against the system OpenSSL ``libcrypto`` (cipher work is never ours).
* ``QUDAG_NO_EXTENSIONS=1`` at build time builds nothing: the pure build.
"""
from __future__ import annotations

import glob
import os
import sys

from setuptools import Extension, setup

PURE_ONLY: dict[str, str] = {
    # "qudag_core/foo.py": "why it cannot be compiled",
}


def _cython_modules() -> list[str]:
    out = []
    for path in sorted(glob.glob("qudag_core/**/*.py", recursive=True)):
        if os.path.basename(path) == "__init__.py" or path in PURE_ONLY:
            continue
        out.append(path)
    return out


def _c_kernels() -> list[Extension]:
    exts = []
    for path in sorted(glob.glob("csrc/*.c")):
        name = os.path.splitext(os.path.basename(path))[0]
        exts.append(
            Extension(
                f"qudag_core._{name}",
                [path],
                include_dirs=["csrc"],
                libraries=["crypto"],
                extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            )
        )
    return exts


def _extensions() -> list[Extension]:
    if os.environ.get("QUDAG_NO_EXTENSIONS") == "1":
        return []
    from Cython.Build import cythonize

    cy = cythonize(
        _cython_modules(),
        compiler_directives={
            "language_level": 3,
            # Annotations stay documentation: compiled and pure builds then accept
            # the same argument types (bytes, bytearray, memoryview ...).
            "annotation_typing": False,
            "binding": True,
            "embedsignature": True,
        },
        nthreads=os.cpu_count() or 1,
        quiet=True,
    )
    return cy + _c_kernels()


setup(ext_modules=_extensions(), zip_safe=False)
