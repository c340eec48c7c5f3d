"""Build specdecode: the Python package, the Triton kernels (``kernels/`` installed as
``specdecode.kernels``) and the C++ CPU kernels (``csrc/`` built as ``specdecode._C``).

Install after the pinned torch is in the environment::

    pip install torch==2.13.0 && pip install --no-build-isolation -e .

``--no-build-isolation`` matters: an isolated build would fetch its own (CUDA, multi-GB) torch
and compile against a different torch than the one that imports the extension.
"""
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = Path(__file__).parent
CSRC = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))

# at::parallel_for runs on a single thread unless OpenMP is on at compile *and* link time.
OPENMP = ["-fopenmp"]

setup(
    name="specdecode",
    version="0.1.0",
    description="Fused kernels for lossless speculative sampling and Speculative Rejection",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["specdecode", "specdecode.ops", "specdecode.reference", "specdecode.decoder", "specdecode.kernels"],
    package_dir={"specdecode": "specdecode", "specdecode.kernels": "kernels"},
    package_data={"specdecode.decoder": ["weights/*.pt", "weights/*.txt"]},
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
    install_requires=["torch>=2.6,<2.14", "triton>=3.2", "numpy"],
    extras_require={
        "test": ["pytest"],
        "bench": ["matplotlib", "transformers"],  # figures; the HF _speculative_sampling baseline
    },
)
