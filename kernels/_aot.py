"""Ahead-of-time compilation of the Triton kernels for real GPU targets, with no GPU present.

The interpreter (``TRITON_INTERPRET=1``) accepts code that a GPU compiler rejects, so every
kernel module lists the launches it makes at realistic sizes (``aot_cases()``), and the test
suite and the GPU readiness report compile each one for NVIDIA and AMD targets through Triton's
own compiler. Registers and spills come from ``ptxas -v`` (NVIDIA) or the AMDGCN metadata.

This module must be used in a process where ``TRITON_INTERPRET`` is unset: under the
interpreter ``@triton.jit`` returns an object the compiler cannot take.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

import triton
from triton.backends.compiler import GPUTarget

TARGETS = {
    "sm_80": GPUTarget("cuda", 80, 32),
    "sm_90": GPUTarget("cuda", 90, 32),
    "gfx942": GPUTarget("hip", "gfx942", 64),
}


@dataclass
class AotCase:
    """One launch configuration of one kernel: what the launcher would compile at this size."""

    name: str  # e.g. "rejection_sample[V=128256]"
    kernel: Any  # the @triton.jit function
    signature: dict[str, str]  # every argument: "*fp32", "i32", "i64", "constexpr", ...
    constexprs: dict[str, Any]
    num_warps: int = 4
    # Arguments known to be 16-byte aligned / multiples of 16, as the launcher specialises them.
    divisible_by_16: tuple[str, ...] = ()
    bytes_moved: int | None = None  # bytes one launch must read + write, for the readiness report
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class AotResult:
    case: AotCase
    target: str
    registers: int
    spills: int  # spill stores + spill loads (bytes on NVIDIA, count on AMD)
    shared_bytes: int
    vector_loads_16b: bool  # whether 16-byte global loads appear (NVIDIA only)
    asm: dict[str, Any]


def compile_case(case: AotCase, target: str) -> AotResult:
    args = list(case.signature)
    attrs = {(args.index(name),): [["tt.divisibility", 16]] for name in case.divisible_by_16}
    source = triton.compiler.ASTSource(
        fn=case.kernel, signature=case.signature, constexprs=case.constexprs, attrs=attrs
    )
    gpu = TARGETS[target]
    compiled = triton.compile(source, target=gpu, options={"num_warps": case.num_warps})
    if gpu.backend == "cuda":
        registers, spills = _ptxas_usage(compiled.asm["ptx"], gpu.arch)
        vector = "ld.global.v4" in compiled.asm["ptx"] or "ld.global.nc.v4" in compiled.asm["ptx"]
    else:
        registers, spills = _amdgcn_usage(compiled.asm["amdgcn"])
        vector = False
    return AotResult(case, target, registers, spills, compiled.metadata.shared, vector,
                     dict(compiled.asm))


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    from triton.backends.nvidia.compiler import get_ptxas

    gpu_name = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx_file:
        ptx_file.write(ptx)
        ptx_file.flush()
        log = subprocess.run(
            [get_ptxas(arch).path, "-v", f"--gpu-name={gpu_name}", ptx_file.name, "-o", "/dev/null"],
            capture_output=True, text=True, check=True,
        ).stderr
    registers = int(re.search(r"Used (\d+) registers", log).group(1))
    stores, loads = map(int, re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups())
    return registers, stores + loads


def _amdgcn_usage(amdgcn: str) -> tuple[int, int]:
    vgprs = int(re.search(r"\.vgpr_count:\s+(\d+)", amdgcn).group(1))
    spills = sum(int(n) for n in re.findall(r"\.[sv]gpr_spill_count:\s+(\d+)", amdgcn))
    return vgprs, spills


def all_cases() -> list[AotCase]:
    """Every AOT case of every kernel module listed in ``specdecode.kernels.KERNEL_MODULES``."""
    import importlib

    from . import KERNEL_MODULES

    cases: list[AotCase] = []
    for module_name in KERNEL_MODULES:
        cases += importlib.import_module(f"{__package__}.{module_name}").aot_cases()
    return cases
