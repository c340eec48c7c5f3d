"""The device the Triton kernel tests run on: the one switch between the CPU suite and the GPU check.

``SPECDECODE_TEST_DEVICE`` (default ``cpu``) names it. On ``cpu`` the launchers run on the
tests' CPU tensors under Triton's interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET=1``);
on ``cuda`` the interpreter stays off, so the same test functions run the compiled kernels on
CUDA tensors (``make gpu-check``, ``bench/gpu_check.py``).

Every kernel test reaches a Triton launcher only through ``launcher(module, name)``: the returned
function moves its tensor arguments to the test device, calls the launcher and brings the results
back to the CPU, where the tests' assertions run unchanged. Arguments are mirrored storage and all
(same storage offset, sizes and strides, arguments sharing a storage still share it), so expanded,
strided and ``rows x V > 2^31`` layouts reach the kernel as the test built them; after an in-place
launcher (its name ends in ``_``) the device storage is copied back into the caller's, so a
compaction modifies the caller's CPU tensor, bytes outside the view included.
``tests/test_device_switch.py`` fails if a kernel test imports a launcher directly.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable

import torch

TEST_DEVICE = torch.device(os.environ.get("SPECDECODE_TEST_DEVICE", "cpu"))
# The Triton kernels are compiled for a GPU (not interpreted) when the tests run on one.
COMPILED = TEST_DEVICE.type != "cpu"


class _Mirror:
    """Device copies of the CPU storages of one call's arguments, one per storage."""

    def __init__(self, device: torch.device):
        self.device = device
        self.storages: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # data_ptr -> (cpu bytes, device bytes)

    def tensor(self, cpu: torch.Tensor) -> torch.Tensor:
        storage = cpu.untyped_storage()
        key = storage.data_ptr()
        if key not in self.storages:
            host_bytes = torch.empty(0, dtype=torch.uint8).set_(storage)
            self.storages[key] = (host_bytes, host_bytes.to(self.device, copy=True))
        device_bytes = self.storages[key][1]
        return torch.empty(0, dtype=cpu.dtype, device=self.device).set_(
            device_bytes.untyped_storage(), cpu.storage_offset(), cpu.shape, cpu.stride()
        )

    def move(self, value):
        if isinstance(value, torch.Tensor) and value.device.type == "cpu":
            return self.tensor(value)
        if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
            return type(value)(self.move(v) for v in value)
        return value

    def copy_back(self) -> None:
        for host_bytes, device_bytes in self.storages.values():
            host_bytes.copy_(device_bytes)


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_to_cpu(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def on_device(fn: Callable, device: torch.device | str | None = None, in_place: bool = False) -> Callable:
    """``fn`` with its tensor arguments mirrored on ``device`` (default: the test device) and its
    results on the CPU. ``in_place``: copy the argument storages back afterwards. With the default
    device on the CPU nothing moves (the interpreter runs on the tests' own tensors); an explicit
    ``device="cpu"`` still mirrors, which is how tests/test_device_switch.py checks the mirror."""
    passthrough = device is None and not COMPILED
    device = torch.device(device) if device is not None else TEST_DEVICE

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if passthrough:
            return fn(*args, **kwargs)
        mirror = _Mirror(device)
        result = fn(*mirror.move(args), **{k: mirror.move(v) for k, v in kwargs.items()})
        if in_place:
            mirror.copy_back()
        return _to_cpu(result)

    call.on_device = device  # lets tests/test_device_switch.py see that a launcher is wrapped
    return call


def launcher(module: str, name: str) -> Callable:
    """The Triton launcher ``specdecode.kernels.<module>.<name>`` on the test device."""
    fn = getattr(importlib.import_module(f"specdecode.kernels.{module}"), name)
    return on_device(fn, in_place=name.endswith("_"))
