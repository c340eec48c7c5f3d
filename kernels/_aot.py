"""Ahead-of-time compilation of the Triton kernels for real GPU targets, with no GPU present.

The interpreter (``TRITON_INTERPRET=1``) accepts code that a GPU compiler rejects, so every
kernel module lists the launches it makes at realistic sizes (``aot_cases()``), and the test
suite and the GPU readiness report compile each one for NVIDIA and AMD targets through Triton's
own compiler. Registers and spills come from ``ptxas -v`` (NVIDIA) or the AMDGCN metadata.

This module must be used in a process where ``TRITON_INTERPRET`` is unset: under the
interpreter ``@triton.jit`` returns an object the compiler cannot take.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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
    load_widths: list[int]  # distinct byte widths of the global loads, widest first
    asm: dict[str, Any]

    @property
    def widest_load_bytes(self) -> int:
        return max(self.load_widths, default=0)


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
        widths = load_widths(compiled.asm["ptx"], "cuda")
    else:
        registers, spills = _amdgcn_usage(compiled.asm["amdgcn"])
        widths = load_widths(compiled.asm["amdgcn"], "hip")
    return AotResult(case, target, registers, spills, compiled.metadata.shared, widths, dict(compiled.asm))


_NVIDIA_LOAD = re.compile(r"\bld\.global(?:\.nc)?(?:\.L\w+::\w+)*(?:\.v(\d))?\.[bfsu](\d+)")
_AMD_LOAD = re.compile(r"\b(?:global|buffer)_load_(dwordx(\d)|dword|short_d16\w*|ushort|sshort|ubyte|sbyte)\b")
_AMD_BYTES = {"dword": 4, "ushort": 2, "sshort": 2, "ubyte": 1, "sbyte": 1}


def load_widths(asm: str, backend: str) -> list[int]:
    """Distinct byte widths of the global load instructions in PTX (``backend='cuda'``) or
    AMDGCN, widest first. Narrow widths include scalar metadata loads (ids, group starts)."""
    widths = set()
    if backend == "cuda":
        for vec, bits in _NVIDIA_LOAD.findall(asm):
            widths.add(int(vec or 1) * int(bits) // 8)
    else:
        for kind, dwords in _AMD_LOAD.findall(asm):
            widths.add(4 * int(dwords) if dwords else _AMD_BYTES.get(kind, 2))
    return sorted(widths, reverse=True)


def widest_load_bytes(asm: str, backend: str) -> int:
    """Bytes of the widest global load instruction (0 if there is none)."""
    return max(load_widths(asm, backend), default=0)


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    from triton.backends.nvidia.compiler import get_ptxas

    gpu_name = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx_file:
        ptx_file.write(ptx)
        ptx_file.flush()
        log = subprocess.run(
            [get_ptxas(arch).path, "-v", f"--gpu-name={gpu_name}", ptx_file.name, "-o", "/dev/null"],
            capture_output=True,
            text=True,
            check=True,
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


def compile_every_case(targets=tuple(TARGETS), name_filter: str | None = None) -> list[dict]:
    """Compile every AOT case for every target, in this process (TRITON_INTERPRET must be
    unset): one JSON-able row per (case, target), failures reported, not raised."""
    rows = []
    for case in all_cases():
        if name_filter and name_filter not in case.name:
            continue
        for target in targets:
            try:
                result = compile_case(case, target)
                rows.append(
                    dict(
                        name=case.name,
                        target=target,
                        ok=True,
                        registers=result.registers,
                        spills=result.spills,
                        shared=result.shared_bytes,
                        num_warps=case.num_warps,
                        widest_load=result.widest_load_bytes,
                        load_widths=result.load_widths,
                        bytes_moved=case.bytes_moved,
                    )
                )
            except Exception as exc:  # report every failure, not only the first
                rows.append(dict(name=case.name, target=target, ok=False, error=repr(exc)[-1500:]))
    return rows


def compile_in_subprocess(targets=tuple(TARGETS), name_filter: str | None = None, timeout: float = 900) -> list[dict]:
    """``compile_every_case`` in a fresh interpreter with ``TRITON_INTERPRET`` unset, so it works
    from a process that runs the kernels under the interpreter (the test suite)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    script = (
        "import json, sys, warnings; warnings.simplefilter('ignore'); "
        "from specdecode.kernels._aot import compile_every_case; "
        "print(json.dumps(compile_every_case(sys.argv[1].split(','), sys.argv[2] or None)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, ",".join(targets), name_filter or ""],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"AOT compile subprocess failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
