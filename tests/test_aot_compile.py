"""Every Triton kernel compiles ahead of time for real GPU targets, with zero register spills.

The interpreter accepts code a GPU compiler rejects (e.g. ``break`` in a loop), so this is the
test that the kernels are real GPU code. No GPU or driver is needed: Triton's own compiler is
given an explicit target. It runs in a subprocess because the rest of the suite has
``TRITON_INTERPRET=1`` set, under which ``@triton.jit`` returns an uncompilable object.
"""

import pytest

from specdecode.kernels._aot import compile_in_subprocess


@pytest.fixture(scope="module")
def aot_results():
    return compile_in_subprocess()


def test_every_kernel_compiles_without_spills(aot_results):
    assert aot_results, "no AOT cases were found: kernels/__init__.py KERNEL_MODULES is empty?"
    failures = [r for r in aot_results if not r["ok"]]
    assert not failures, "\n".join(f"{r['name']} @ {r['target']}: {r['error']}" for r in failures)
    spilling = [r for r in aot_results if r["spills"]]
    assert not spilling, "\n".join(f"{r['name']} @ {r['target']}: {r['spills']} spilled" for r in spilling)
    targets = {r["target"] for r in aot_results}
    assert targets == {"sm_80", "sm_90", "gfx942"}


def test_verifier_streams_with_16_byte_loads(aot_results):
    """The vocabulary rows are streamed with 16-byte vector loads on every target and dtype
    (launches specialise V and the row strides as multiples of 16, as Triton does for such values)."""
    verifier = [r for r in aot_results if r["name"].startswith("rejection_sample[")]
    assert verifier
    narrow = [f"{r['name']} @ {r['target']}" for r in verifier if r["widest_load"] < 16]
    assert not narrow, narrow
