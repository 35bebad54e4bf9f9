"""Developer helper: compile only the named modules in place, e.g.

    python tools/inplace.py qudag_core/krpc/bencode.py csrc/bencode.c

so that a half-written module elsewhere never breaks your build.  ``make install``
builds everything."""
from __future__ import annotations

import os
import sys

from setuptools import Extension
from setuptools.dist import Distribution


def main(paths: list[str]) -> None:
    from Cython.Build import cythonize

    pys = [p for p in paths if p.endswith(".py")]
    cs = [p for p in paths if p.endswith(".c")]
    exts = []
    if pys:
        exts += cythonize(pys, compiler_directives={"language_level": 3, "annotation_typing": False,
                                                     "binding": True, "embedsignature": True}, quiet=True)
    for c in cs:
        name = os.path.splitext(os.path.basename(c))[0]
        exts.append(Extension(f"qudag_core._{name}", [c], include_dirs=["csrc"], libraries=["crypto"],
                              extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"]))
    dist = Distribution({"ext_modules": exts, "script_name": "inplace", "script_args": ["build_ext", "--inplace"]})
    dist.parse_command_line()
    dist.run_commands()


if __name__ == "__main__":
    main(sys.argv[1:])
