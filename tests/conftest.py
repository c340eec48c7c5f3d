"""Test configuration.

The Triton kernels are tested on CPU tensors under Triton's interpreter, which must be switched
on before the kernel modules are imported (``@triton.jit`` reads it at decoration time). The
ahead-of-time compile test runs in a subprocess with the interpreter off.

``SPECDECODE_TEST_DEVICE=cuda`` (the GPU check, ``make gpu-check``) runs the same Triton tests on
CUDA tensors with the compiled kernels instead: the interpreter is then forced off, and the
kernel tests reach their launchers through ``tests/devices.py``.
"""

import os

if os.environ.get("SPECDECODE_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    os.environ["TRITON_INTERPRET"] = "0"  # compiled kernels, whatever the caller's shell had set

import pytest  # noqa: E402
import torch  # noqa: E402
from devices import TEST_DEVICE  # noqa: E402


def pytest_configure(config):
    if TEST_DEVICE.type == "cuda" and not torch.cuda.is_available():
        # Fail loudly: skipping would report a GPU run that never touched a GPU.
        raise pytest.UsageError(f"SPECDECODE_TEST_DEVICE={TEST_DEVICE} but torch {torch.__version__} sees no CUDA GPU")


def pytest_report_header(config):
    kernels = "compiled Triton kernels" if TEST_DEVICE.type != "cpu" else "Triton interpreter"
    return f"specdecode kernel tests on {TEST_DEVICE} ({kernels})"


def pytest_collection_modifyitems(config, items):
    if config.getoption("-m"):
        return  # an explicit -m expression decides
    skip_slow = pytest.mark.skip(reason="slow statistical run: `make test-slow` or `pytest -m slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-model tests: they are all per-op overhead, a second
    thread only adds contention (and on a shared 2-core machine OpenMP spin-waits made it 10x
    slower). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
