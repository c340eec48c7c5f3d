"""Test configuration.

The Triton kernels are tested on CPU tensors under Triton's interpreter, which must be switched
on before the kernel modules are imported (``@triton.jit`` reads it at decoration time). The
ahead-of-time compile test runs in a subprocess with the interpreter off.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


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
