"""The benchmarks of the GPU check (bench/gpu_check.py): every op on the check's device, its peers'
kernels side by side in the same run, achieved bandwidth against the measured copy peak, the
datasheet peak and the bytes model of bench/gpu_report.py.

On CUDA every time is the median of CUDA-event timings (one event pair per call, after warm-up);
the dry run (CPU tensors) times with bench/timing.py instead. Rows are JSON-ready dicts.
"""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Callable

import torch

import specdecode as sd
from bench.bench_compact_kv import kept_indices
from bench.bench_rejection_sample import make_inputs, must_read_bytes
from bench.bench_topk_prune import topk_loop
from bench.gpu_report import compaction_designs, prune_designs, rejection_designs
from bench.report import Log
from bench.timing import median_ms

# The verifier shapes (B, K, V); the dry run uses small ones.
VERIFIER_SHAPES = [(1, 4, 32000), (16, 5, 32000), (64, 4, 128256), (256, 8, 151936)]
DRY_VERIFIER_SHAPES = [(1, 4, 512), (4, 3, 1000)]
PRUNE_SHAPES = [(1, 1024), (64, 8), (64, 1024), (256, 256)]  # (prompts, candidates per prompt)
DRY_PRUNE_SHAPES = [(4, 16)]
# A [B, H, S, D] bf16 KV cache (one layer's K of a Llama-3-8B-like model; 1 GiB at B = 64, S = 8192).
COMPACTION_SHAPES = [(64, 8, 8192, 128), (256, 8, 1024, 128)]
DRY_COMPACTION_SHAPES = [(8, 2, 16, 8)]
PATTERNS = ["keep 50%", "drop row 0"]


def sizes(dry_run: bool, quick: bool) -> dict[str, list]:
    """The shapes of each benchmark: small on the CPU (dry run); ``--quick`` drops the largest
    verifier shape (its inputs take seconds to make) and one cache."""
    if dry_run:
        return {"verifier": DRY_VERIFIER_SHAPES, "topk_prune": DRY_PRUNE_SHAPES, "compaction": DRY_COMPACTION_SHAPES}
    if quick:
        return {"verifier": VERIFIER_SHAPES[:3], "topk_prune": PRUNE_SHAPES, "compaction": COMPACTION_SHAPES[:1]}
    return {"verifier": VERIFIER_SHAPES, "topk_prune": PRUNE_SHAPES, "compaction": COMPACTION_SHAPES}


# Datasheet DRAM bandwidth (TB/s) of the GPUs this is most likely to meet, by a substring of
# torch.cuda.get_device_name(); the first match wins, so more specific names come first.
DATASHEET_TBS = [
    ("H200", 4.8),
    ("H100 PCIe", 2.0),
    ("H100 NVL", 3.9),
    ("H100", 3.35),
    ("GH200", 4.0),
    ("B200", 8.0),
    ("A100-SXM4-80GB", 2.039),
    ("A100 80GB PCIe", 1.935),
    ("A100", 1.555),
    ("L40S", 0.864),
    ("L4", 0.3),
    ("A10G", 0.6),
    ("A10", 0.6),
    ("RTX 4090", 1.008),
    ("MI300X", 5.3),
]


def datasheet_tbs(device_name: str) -> float | None:
    return next((tbs for key, tbs in DATASHEET_TBS if key in device_name), None)


def time_ms(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median milliseconds of ``fn()``: CUDA events around each call on a GPU (after 3 warm-up
    calls, which also compile the Triton kernels), bench/timing.py's wall clock on the CPU."""
    if device.type != "cuda":
        return median_ms(fn, max(reps // 10, 2))
    for _ in range(3):
        fn()
    torch.cuda.synchronize(device)
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in pairs:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in pairs)


def copy_peak_gbs(device: torch.device, nbytes: int, reps: int) -> float:
    """Device-to-device ``copy_`` bandwidth, counting the bytes read and written (as datasheets
    and the bytes model do)."""
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, reps)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------- peers


def _peer_flashinfer() -> Callable:
    sampling = importlib.import_module("flashinfer.sampling")

    def verify(draft_ids, draft_probs, target_probs):
        return sampling.chain_speculative_sampling(draft_probs, draft_ids.int(), target_probs)

    return verify


def _peer_vllm() -> Callable:
    # vLLM's rejection sampler takes flat [num_tokens] drafts, per-request counts and its
    # SamplingMetadata (built as bench/bench_vllm.py builds it).
    rejection = importlib.import_module("vllm.v1.sample.rejection_sampler")
    from bench.bench_vllm import sampling_metadata

    def verify(draft_ids, draft_probs, target_probs):
        batch, num_drafts = draft_ids.shape
        counts = [num_drafts] * batch
        device = draft_ids.device
        cu = torch.tensor(counts, dtype=torch.int32, device=device).cumsum(0).to(torch.int32)
        bonus = target_probs[:, num_drafts].argmax(-1, keepdim=True).int()
        metadata = sampling_metadata(torch.ones(batch, device=device))
        return rejection.rejection_sample(
            draft_ids.int().flatten(),
            counts,
            num_drafts,
            cu,
            draft_probs.flatten(0, 1),
            target_probs[:, :num_drafts].flatten(0, 1),
            bonus,
            metadata,
        )

    return verify


def _peer_sgl_kernel() -> Callable:
    # SGLang's tree verifier on a chain-shaped tree: node 0 is the last verified token (the root),
    # node i + 1 the i-th draft, each node's only child the next one; flat node i of row b is
    # b * (K + 1) + i. Its outputs are written in place into the int32 buffers made here.
    import inspect

    verify_tree = importlib.import_module("sgl_kernel").tree_speculative_sampling_target_only
    two_uniform_sets = "uniform_samples_for_final_sampling" in inspect.signature(verify_tree).parameters

    def verify(draft_ids, draft_probs, target_probs):
        batch, num_drafts = draft_ids.shape
        nodes, device = num_drafts + 1, draft_ids.device
        candidates = torch.cat([torch.zeros_like(draft_ids[:, :1]), draft_ids], 1)
        flat = torch.arange(batch * nodes, device=device).view(batch, nodes)
        next_token = torch.arange(1, nodes + 1, device=device).expand(batch, nodes).contiguous()
        next_token[:, -1] = -1
        no_sibling = torch.full((batch, nodes), -1, dtype=torch.int64, device=device)
        uniforms = torch.rand(batch, nodes, device=device)
        draft = torch.cat([draft_probs, draft_probs[:, -1:]], 1)  # a row per node, as it expects
        outputs = (
            torch.empty(batch * nodes, dtype=torch.int32, device=device),
            torch.empty(batch, nodes, dtype=torch.int32, device=device),
            torch.empty(batch, dtype=torch.int32, device=device),
        )
        final = (torch.rand(batch, device=device),) if two_uniform_sets else ()
        verify_tree(*outputs, candidates, flat, next_token, no_sibling, uniforms, *final, target_probs, draft)
        return outputs

    return verify


PEERS = {  # name -> (package to pip install, adapter factory)
    "flashinfer": ("flashinfer-python", _peer_flashinfer),
    "vllm": ("vllm", _peer_vllm),
    "sgl-kernel": ("sgl-kernel", _peer_sgl_kernel),
}


def load_peers(install_status: dict[str, str], log: Log) -> tuple[dict[str, Callable], dict[str, str]]:
    """The peers' verifiers that import here, and a status line for every peer (installed or why
    not, imported or why not): a peer is never skipped silently."""
    verifiers, status = {}, {}
    for name, (package, factory) in PEERS.items():
        installed = install_status.get(name, "not installed (dry run)")
        status[name] = f"{package}: {installed}"
        if installed.startswith("installed"):
            try:
                verifiers[name] = factory()
                status[name] += "; imported"
            except Exception as error:  # any import or adapter failure is the peer's status, not a crash
                status[name] += f"; not usable: {type(error).__name__}: {error}"
        log(f"  peer {name}: {status[name]}")
    return verifiers, status


# ----------------------------------------------------------------------------- the ops


def _bandwidth(nbytes: float, ms: float, copy_gbs: float, sheet_tbs: float | None) -> dict:
    gbs = nbytes / (ms * 1e-3) / 1e9
    return {"GBs": gbs, "of_copy": gbs / copy_gbs, "of_datasheet": gbs / (sheet_tbs * 1e3) if sheet_tbs else None}


def verifier_rows(device, shapes, reps, peers, copy_gbs, sheet_tbs, log: Log) -> list[dict]:
    """``rejection_sample`` at every (B, K, V) in fp32 and bf16: the Triton op (public wrapper) on
    the device, each peer's kernel on the same inputs, bytes moved and bandwidth."""
    rows = []
    for batch, num_drafts, vocab in shapes:
        cpu_ids, cpu_draft, cpu_target = make_inputs(batch, num_drafts, vocab)
        for dtype in (torch.float32, torch.bfloat16):
            ids, draft, target = cpu_ids.to(device), cpu_draft.to(device, dtype), cpu_target.to(device, dtype)
            elem = target.element_size()
            out = sd.rejection_sample(ids, draft, target, seed=0)
            ms = time_ms(lambda: sd.rejection_sample(ids, draft, target, seed=0), device, reps)
            greedy, seeds = torch.zeros(batch, dtype=torch.bool, device=device), out.token_ids.new_zeros(1)
            kernel_ms = None  # the Triton launcher alone, without the wrapper's checks (CUDA only)
            if device.type == "cuda":
                launch = importlib.import_module("specdecode.kernels.rejection_sample").rejection_sample
                kernel_ms = time_ms(lambda: launch(ids, draft, target, greedy, seeds, seeds), device, reps)
            acceptance = float(out.num_accepted.float().mean()) / num_drafts
            model = rejection_designs(batch, num_drafts, vocab, elem, min(acceptance, 0.999))
            must_read = must_read_bytes(out.num_accepted.cpu(), num_drafts, vocab, elem)
            row = {"op": "rejection_sample", "B": batch, "K": num_drafts, "V": vocab, "dtype": str(dtype)[6:]}
            row.update(specdecode_ms=ms, triton_launcher_ms=kernel_ms, acceptance=acceptance, must_read_bytes=must_read)
            row.update(model_min_bytes=model[0].bytes, model_specdecode_bytes=model[1].bytes)
            row.update(_bandwidth(must_read, ms, copy_gbs, sheet_tbs))
            for name, verify in peers.items():
                try:
                    peer_ms = time_ms(lambda: verify(ids, draft, target), device, reps)
                    row[f"{name}_ms"], row[f"{name}_over_specdecode"] = peer_ms, peer_ms / ms
                except Exception as error:  # e.g. a dtype the peer does not take: said in the row
                    row[f"{name}_error"] = f"{type(error).__name__}: {str(error)[:200]}"
            log(f"  verifier B={batch} K={num_drafts} V={vocab} {row['dtype']}: {ms:.4f} ms, {row['GBs']:.0f} GB/s")
            rows.append(row)
    return rows


def prune_rows(device, shapes, reps, copy_gbs, sheet_tbs, log: Log) -> list[dict]:
    """The fixed-shape ``topk_prune`` op against a torch.topk loop per prompt (alpha = 0.5),
    exactness checked against the loop before timing."""
    rows = []
    for num_prompts, group in shapes:
        rewards = torch.randn(num_prompts * group, generator=torch.Generator().manual_seed(0)).to(device)
        group_sizes = [group] * num_prompts
        num_keep = sd.num_keep_from_alpha(group_sizes, 0.5)
        sizes_t, keeps_t = torch.tensor(group_sizes, device=device), torch.tensor(num_keep, device=device)
        mask = torch.ops.specdecode.topk_prune(rewards, sizes_t, keeps_t)
        exact = torch.equal(mask.nonzero().flatten(), topk_loop(rewards, group_sizes, num_keep).to(mask.device))
        ms = time_ms(lambda: torch.ops.specdecode.topk_prune(rewards, sizes_t, keeps_t), device, reps)
        loop_ms = time_ms(lambda: topk_loop(rewards, group_sizes, num_keep), device, max(reps // 4, 5))
        model = prune_designs(num_prompts, group, rewards.element_size(), keep_rate=0.5)
        row = {"op": "topk_prune", "P": num_prompts, "n": group, "exact": exact, "specdecode_ms": ms}
        row.update(topk_loop_ms=loop_ms, loop_over_specdecode=loop_ms / ms, model_bytes=model[1].bytes)
        row.update(_bandwidth(model[1].bytes, ms, copy_gbs, sheet_tbs))
        log(f"  topk_prune P={num_prompts} n={group}: {ms * 1e3:.1f} us, loop {loop_ms * 1e3:.1f} us, exact {exact}")
        rows.append(row)
    return rows


def compaction_rows(device, shapes, reps, copy_gbs, sheet_tbs, log: Log) -> list[dict]:
    """In-place ``compact_kv_cache_`` on a bf16 [B, H, S, D] cache against ``index_select`` +
    ``copy_`` and a plain copy of the bytes that move; the bytes checked against index_select."""
    rows = []
    for shape in shapes:
        for pattern in PATTERNS:
            generator = torch.Generator().manual_seed(0)
            kept = kept_indices(pattern, shape[0], generator).to(device)
            cache = torch.randn(shape, device=device, dtype=torch.bfloat16)
            expected = cache.index_select(0, kept)
            sd.compact_kv_cache_(cache, kept, 0)
            exact = torch.equal(cache[: kept.numel()], expected)
            del expected
            row_bytes = cache[0].numel() * cache.element_size()
            designs = compaction_designs(row_bytes, shape[0], kept.tolist())
            moved = designs[0].bytes / 2
            src = torch.empty(int(moved), dtype=torch.uint8, device=device)
            dst = torch.empty_like(src)
            ms = time_ms(lambda: sd.compact_kv_cache_(cache, kept, 0), device, reps)
            copy_ms = time_ms(lambda: dst.copy_(src), device, reps)
            survivors = cache.narrow(0, 0, kept.numel())
            index_ms = time_ms(lambda: survivors.copy_(cache.index_select(0, kept)), device, reps)
            row = {"op": "compact_kv_cache_", "shape": list(shape), "pattern": pattern, "exact": exact}
            row.update(specdecode_ms=ms, copy_ms=copy_ms, index_select_ms=index_ms, moved_bytes=moved)
            row.update(of_plain_copy=copy_ms / ms, index_select_over_specdecode=index_ms / ms)
            row.update(_bandwidth(designs[1].bytes, ms, copy_gbs, sheet_tbs))
            log(f"  compact {list(shape)} {pattern}: {ms:.3f} ms, copy {copy_ms:.3f} ms, exact {exact}")
            rows.append(row)
    return rows
