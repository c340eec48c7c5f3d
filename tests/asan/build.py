"""Build the C++ extension (``csrc/``) with AddressSanitizer and UBSan into ``build/asan/``.

The normal extension in the tree (``specdecode/_C*.so``) is never touched: this writes
``build/asan/_C.so``, which ``tests/asan/sitecustomize.py`` loads as ``specdecode._C`` when
``SPECDECODE_C_EXTENSION`` points at it (``tests/asan/run.sh`` sets everything up). Rebuilds only
when a file in ``csrc/`` is newer than the library. Prints the library's path.

``-fno-wrapv`` keeps signed overflow undefined (so UBSan reports it) and
``-fno-sanitize-recover=all`` makes every finding fatal: a test then fails instead of a report
scrolling past.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
BUILD = ROOT / "build" / "asan"
LIBRARY = BUILD / "_C.so"

SANITIZE = ["-fsanitize=address,undefined", "-fno-wrapv", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
ABI = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"


def _compile(source: Path) -> Path:
    obj = BUILD / (source.stem + ".o")
    includes = [f"-I{path}" for path in [CSRC, *cpp_extension.include_paths(), sysconfig.get_paths()["include"]]]
    command = [
        "g++",
        "-std=c++17",
        "-O1",
        "-g",
        "-fPIC",
        "-fopenmp",
        "-Wno-c++20-extensions",
        ABI,
        "-DTORCH_EXTENSION_NAME=_C",
    ]
    subprocess.run([*command, *SANITIZE, *includes, "-c", str(source), "-o", str(obj)], check=True)
    return obj


def build() -> Path:
    sources = sorted(CSRC.glob("*.cpp"))
    inputs = [*sources, *CSRC.glob("*.h"), Path(__file__)]
    if LIBRARY.exists() and LIBRARY.stat().st_mtime > max(path.stat().st_mtime for path in inputs):
        return LIBRARY
    BUILD.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=2) as pool:  # the CI machine has two cores
        objects = list(pool.map(_compile, sources))
    libraries = [f"-L{path}" for path in cpp_extension.library_paths()]
    link = ["g++", "-shared", "-fopenmp", *SANITIZE, *map(str, objects), *libraries]
    link += ["-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python", "-o", str(LIBRARY)]
    subprocess.run(link, check=True)
    return LIBRARY


if __name__ == "__main__":
    sys.stdout.write(f"{build()}\n")
