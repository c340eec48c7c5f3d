"""Build the C++ CPU kernels (``csrc/`` -> ``specdecode._C``). Everything else about the package
(metadata, packages, extras) is in ``pyproject.toml``.

Install after the pinned torch is in the environment::

    pip install torch==2.13.0 && pip install --no-build-isolation -e .

``--no-build-isolation`` matters: an isolated build compiles against the torch pinned in
``pyproject.toml``'s build requirements, which must then be the torch installed at run time.
"""

from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = Path(__file__).parent
CSRC = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))

# at::parallel_for runs on a single thread unless OpenMP is on at compile *and* link time.
OPENMP = ["-fopenmp"]

setup(
    ext_modules=[
        CppExtension(
            "specdecode._C",
            CSRC,
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args=["-O3", "-std=c++17", *OPENMP],
            extra_link_args=OPENMP,
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
