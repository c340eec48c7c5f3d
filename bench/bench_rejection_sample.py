"""Microbenchmark of the verifier on CPU: the C++ op vs pure-PyTorch implementations.

    python -m bench.bench_rejection_sample            # the README's numbers
    python -m bench.bench_rejection_sample --quick    # fewer repetitions, two shapes

Rows: ``run(...)`` returns them and saves ``bench/out/rejection_sample.json``.

Contenders, all on the same inputs (float32, drafts sampled from p, p close to q so about
60-70% of drafts are accepted, as with a real draft model):
- ``specdecode`` — ``sd.rejection_sample``: the C++ kernel through the registered op.
- ``reference`` — ``specdecode.reference.rejection_sample``: the spec in code, vectorised PyTorch.
- ``multinomial`` — the common PyTorch formulation (as in vLLM v0 / HF): residuals
  ``max(0, q - p)`` materialised and normalised for every draft position, ``torch.multinomial``.
- ``hf`` — HF transformers' ``_speculative_sampling`` (B = 1 only; it takes logits and applies
  softmax itself, so it is given log-probabilities), when transformers is installed.

The floor is the bytes the op must read (per row: the K gathered probabilities plus the one
target row it samples from, and the draft row when that sample is a residual) divided by the
copy bandwidth measured here on a buffer of the same size (bytes copied / time). Times are
medians over repeated calls with warm caches, for every contender alike.
"""

from __future__ import annotations

import sys

import torch

import specdecode as sd
from bench import plots
from bench.report import OUT_DIR, Log, Section, figure_path, microbenchmark_main, save_rows
from bench.timing import copy_bandwidth_gbs, median_ms, torch_threads
from specdecode.reference import rejection_sample as ref

TOPIC = "rejection_sample"

SHAPES = [(1, 4, 32000), (8, 4, 32000), (64, 4, 32000), (64, 8, 128256), (256, 4, 128256)]


def make_inputs(batch: int, num_drafts: int, vocab: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    target_logits = torch.randn(batch, num_drafts + 1, vocab, generator=gen) * 2
    draft_logits = target_logits[:, :num_drafts] + torch.randn(batch, num_drafts, vocab, generator=gen) * 0.5
    target_probs = torch.softmax(target_logits, -1)
    draft_probs = torch.softmax(draft_logits, -1)
    draft_ids = torch.multinomial(draft_probs.reshape(-1, vocab), 1, generator=gen).reshape(batch, num_drafts)
    return draft_ids, draft_probs, target_probs


def multinomial_baseline(draft_ids, draft_probs, target_probs, generator):
    """The usual PyTorch verifier: every position's residual is built and sampled."""
    batch, num_drafts = draft_ids.shape
    q_at = target_probs[:, :num_drafts].gather(-1, draft_ids[..., None]).squeeze(-1)
    p_at = draft_probs.gather(-1, draft_ids[..., None]).squeeze(-1)
    u = torch.rand(batch, num_drafts, generator=generator)
    accepted = (u * p_at < q_at).long().cumprod(-1)
    num_accepted = accepted.sum(-1)
    residual = (target_probs[:, :num_drafts] - draft_probs).clamp_min(0)
    residual = residual / residual.sum(-1, keepdim=True).clamp_min(1e-30)
    recovered = torch.multinomial(residual.reshape(batch * num_drafts, -1), 1, generator=generator)
    recovered = recovered.reshape(batch, num_drafts)
    bonus = torch.multinomial(target_probs[:, num_drafts], 1, generator=generator)
    emitted_options = torch.cat([recovered, bonus], 1)
    emitted = emitted_options.gather(1, num_accepted[:, None])
    positions = torch.arange(num_drafts + 1)[None]
    padded = torch.cat([draft_ids, torch.full((batch, 1), -1)], 1)
    tokens = torch.where(positions < num_accepted[:, None], padded, -1)
    return torch.where(positions == num_accepted[:, None], emitted, tokens), num_accepted


def hf_speculative_sampling():
    try:
        from transformers.generation.utils import _speculative_sampling
    except ImportError:
        return None
    return _speculative_sampling


def must_read_bytes(num_accepted: torch.Tensor, num_drafts: int, vocab: int, elem: int) -> int:
    residual_rows = int((num_accepted < num_drafts).sum())
    rows = num_accepted.numel()
    gathers = rows * num_drafts * 2 * elem
    return gathers + rows * vocab * elem + residual_rows * vocab * elem


def settings(quick: bool) -> dict:
    """``run``'s arguments for the full run (the README's numbers) or ``--quick``."""
    if quick:
        return {"shapes": SHAPES[:3:2], "min_reps": 5, "min_seconds": 0.2}
    return {"shapes": SHAPES, "min_reps": 20, "min_seconds": 1.0}


def run(
    shapes=SHAPES,
    min_reps: int = 20,
    min_seconds: float = 1.0,
    threads: int | None = None,
    out_dir: str | None = OUT_DIR,
    log: Log = print,
) -> list[dict]:
    """One row per (B, K, V): ``shape``, ``accept_rate``, the median ms of every contender
    (``specdecode``, ``reference``, ``multinomial``, ``hf`` when measured), ``floor`` (ms) and
    ``bytes`` (the bytes behind the floor). Saved as ``<out_dir>/rejection_sample.json``."""
    with torch_threads(threads):
        rows = []
        for shape in shapes:
            log(f"  rejection_sample {shape} ...", flush=True)
            rows.append(measure(*shape, min_reps, min_seconds))
    return save_rows(TOPIC, rows, out_dir)


def measure(batch: int, num_drafts: int, vocab: int, min_reps: int, min_seconds: float) -> dict:
    draft_ids, draft_probs, target_probs = make_inputs(batch, num_drafts, vocab)
    seeds = torch.tensor([1])
    out = sd.rejection_sample(draft_ids, draft_probs, target_probs, seed=seeds)
    gen = torch.Generator().manual_seed(0)
    baseline_reps = max(3, min_reps // 10)  # the slow contenders: fewer calls, as many seconds
    row = {
        "shape": [batch, num_drafts, vocab],
        "accept_rate": float(out.num_accepted.float().mean()) / num_drafts,
        "specdecode": median_ms(
            lambda: sd.rejection_sample(draft_ids, draft_probs, target_probs, seed=seeds), min_reps, min_seconds
        ),
        "reference": median_ms(
            lambda: ref.rejection_sample(
                draft_ids, draft_probs, target_probs, torch.zeros(batch, dtype=torch.bool), seeds, torch.tensor([0])
            ),
            baseline_reps,
            min_seconds,
        ),
        "multinomial": median_ms(
            lambda: multinomial_baseline(draft_ids, draft_probs, target_probs, gen), baseline_reps, min_seconds
        ),
    }
    hf = hf_speculative_sampling()
    if hf is not None and batch == 1:
        logits_draft, logits_target = draft_probs.log(), target_probs.log()
        row["hf"] = median_ms(
            lambda: hf(draft_ids, logits_draft, num_drafts, logits_target), baseline_reps, min_seconds
        )
    nbytes = must_read_bytes(out.num_accepted, num_drafts, vocab, 4)
    row["floor"] = nbytes / (copy_bandwidth_gbs(nbytes, min_reps, min_seconds) * 1e9) * 1e3
    row["bytes"] = nbytes
    return row


TABLE_HEADER = [
    "(B, K, V)",
    "accept",
    "specdecode ms",
    "reference ms",
    "multinomial ms",
    "hf ms",
    "ref/sd",
    "mult/sd",
    "hf/sd",
    "floor ms",
    "sd/floor",
]


def table_rows(rows: list[dict]) -> list[list[str]]:
    table = []
    for r in rows:
        hf, sd_ms = r.get("hf"), r["specdecode"]
        table.append(
            [
                "(" + ", ".join(str(x) for x in r["shape"]) + ")",
                f"{r['accept_rate']:.2f}",
                f"{sd_ms:.3f}",
                f"{r['reference']:.3f}",
                f"{r['multinomial']:.3f}",
                f"{hf:.3f}" if hf else "-",
                f"{r['reference'] / sd_ms:.1f}x",
                f"{r['multinomial'] / sd_ms:.1f}x",
                f"{hf / sd_ms:.1f}x" if hf else "-",
                f"{r['floor']:.3f}",
                f"{sd_ms / r['floor']:.2f}x",
            ]
        )
    return table


def section(rows: list[dict], figures_dir: str | None = None) -> Section:
    s = Section(
        "Verifier microbenchmark (CPU)",
        "Median time of one `rejection_sample` call: the C++ op (`specdecode`) vs the pure-PyTorch "
        "reference, the per-position-residual + `torch.multinomial` formulation (vLLM v0 / HF style) and "
        "HF transformers' `_speculative_sampling` (B = 1, when installed). Floor = bytes the op must read "
        "(gathers + the one sampled row) / copy bandwidth measured here on a buffer of that size.",
    )
    if not any("hf" in r for r in rows) and any(r["shape"][0] == 1 for r in rows):
        s.text("transformers is not installed: no HF column (`pip install transformers`).")
    s.table(TABLE_HEADER, table_rows(rows))
    s.image(
        plots.plot_op_ratios(
            [{k: v for k, v in r.items() if k != "accept_rate"} for r in rows],
            figure_path(figures_dir, "verifier_vs_floor.png"),
            "Verifier: median time / floor (CPU)",
        )
    )
    return s


def main(argv: list[str] | None = None) -> None:
    microbenchmark_main(
        sys.modules[__name__], argv, quick_help="two shapes, fewer repetitions", setup_note="float32 probabilities"
    )


if __name__ == "__main__":
    main()
