"""Run every benchmark, print its tables, and write ``bench/out/report.md`` plus PNG figures.

    python -m bench                      # everything, the README's numbers (long: prints progress)
    python -m bench --quick              # every section at small sizes, a few minutes
    python -m bench --quick seed gpu     # only some sections
    python -m bench --list               # the sections and what each measures

Sections (in this order): verifier, pruning, compaction (the op microbenchmarks on CPU; ``ops``
selects all three), gpu (GPU readiness: AOT compile facts and a bytes model), seed (seed 2's
1M-sample and greedy experiments), e2e (speculative vs plain decoding on the shipped pair),
spr (Speculative Rejection vs Best-of-N, and partial-vs-final rewards). A section that fails
is reported in the report and the exit code, and the others still run. ``bench/out/`` is
git-ignored; figures need matplotlib (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch

from bench import plots
from bench.plots import markdown_table, print_table

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
THREADS: int | None = None  # --threads: torch threads for every section (None: each benchmark's default)


@dataclass
class Section:
    title: str
    about: str  # what it measures, for the report
    body: list[str] = field(default_factory=list)  # markdown chunks
    images: list[str] = field(default_factory=list)
    failed: bool = False

    def table(self, header, rows, caption: str | None = None) -> None:
        if caption:
            self.body.append(caption)
        self.body.append(markdown_table(header, rows))

    def text(self, text: str) -> None:
        self.body.append(text)

    def code(self, text: str) -> None:
        self.body.append("```\n" + text.rstrip() + "\n```")

    def image(self, path: str | None) -> None:
        if path:
            self.images.append(path)


class _Tee(io.TextIOBase):
    """Write to the terminal and keep a copy (others' benchmarks print their tables)."""

    def __init__(self, stream):
        self.stream, self.buffer_ = stream, io.StringIO()

    def write(self, text):
        self.stream.write(text)
        self.buffer_.write(text)
        return len(text)

    def flush(self):
        self.stream.flush()


def capture(fn, *args, argv: list[str] | None = None, **kwargs):
    """Run ``fn`` with stdout tee'd (and ``sys.argv`` set, for ``main()`` functions that parse
    it themselves); return ``(result, printed text)``."""
    tee = _Tee(sys.stdout)
    saved_argv, saved_threads = sys.argv, torch.get_num_threads()
    if argv is not None:
        sys.argv = ["bench", *argv]
    try:
        with contextlib.redirect_stdout(tee):
            result = fn(*args, **kwargs)
    finally:
        sys.argv = saved_argv
        torch.set_num_threads(saved_threads)  # some benchmarks set their own thread count
    return result, tee.buffer_.getvalue()


def call_main(module, quick: bool):
    """``module.main`` with ``--quick`` or not, whether it takes ``argv`` or reads ``sys.argv``;
    returns ``(result, printed text)``."""
    import inspect

    argv = (["--quick"] if quick else []) + (["--threads", str(THREADS)] if THREADS else [])
    if inspect.signature(module.main).parameters:
        return capture(module.main, argv, argv=argv)
    return capture(module.main, argv=argv)


def as_markdown(printed: str) -> str:
    """Another benchmark's printed output for the report: its own ``## `` headings become bold
    lines (they would otherwise break this report's structure); tables pass through."""
    lines = []
    for line in printed.rstrip().splitlines():
        lines += [f"**{line[3:].strip()}**", ""] if line.startswith("## ") else [line]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- op microbenchmarks


def section_verifier(quick: bool) -> Section:
    from bench import bench_rejection_sample as br

    s = Section(
        "Verifier microbenchmark (CPU)",
        "Median time of one `rejection_sample` call: the C++ op (`specdecode`) vs the pure-PyTorch "
        "reference, the per-position-residual + `torch.multinomial` formulation (vLLM v0 / HF style) and "
        "HF transformers' `_speculative_sampling` (B = 1, when installed). Floor = bytes the op must read "
        "(gathers + the one sampled row) / copy bandwidth measured here on a buffer of that size.",
    )
    shapes = br.SHAPES[:3:2] if quick else br.SHAPES
    rows = br.run(shapes, min_reps=5 if quick else 20, min_seconds=0.2 if quick else 1.0)
    header = [
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
    table = []
    for r in rows:
        hf = r.get("hf")
        table.append(
            [
                str(r["shape"]),
                f"{r['accept_rate']:.2f}",
                f"{r['specdecode']:.3f}",
                f"{r['reference']:.3f}",
                f"{r['multinomial']:.3f}",
                f"{hf:.3f}" if hf else "-",
                f"{r['reference'] / r['specdecode']:.1f}x",
                f"{r['multinomial'] / r['specdecode']:.1f}x",
                f"{hf / r['specdecode']:.1f}x" if hf else "-",
                f"{r['floor']:.3f}",
                f"{r['specdecode'] / r['floor']:.2f}x",
            ]
        )
    if br.hf_speculative_sampling() is None:
        s.text("transformers is not installed: no HF column (`pip install transformers`).")
    s.table(header, table)
    s.image(
        plots.plot_op_ratios(
            [{k: v for k, v in r.items() if k not in ("accept_rate",)} for r in rows],
            os.path.join(OUT_DIR, "verifier_vs_floor.png"),
            "Verifier: median time / floor (CPU)",
        )
    )
    return s


def _parse_whitespace_rows(text: str, num_columns: int) -> list[list[str]]:
    """Rows of a printed fixed-width table whose cells have no spaces: lines after the dashes."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("---")), None)
    if start is None:
        return []
    rows = [line.split() for line in lines[start + 1 :]]
    return [r for r in rows if len(r) == num_columns]


def section_pruning(quick: bool) -> Section:
    s = Section(
        "Pruning microbenchmark (CPU)",
        "Median time to prune P prompts x n candidates (alpha = 0.5): the fixed-shape C++ op, the public "
        "`sd.topk_prune` (checks + alpha -> k + kept indices), and a per-prompt `torch.topk` loop. Floor = "
        "(rewards read + mask written) / copy bandwidth measured here: far below the call overhead, so "
        "these times are launch/overhead-bound, not bandwidth-bound.",
    )
    from bench import bench_topk_prune as module

    _, text = call_main(module, quick)
    rows = _parse_whitespace_rows(text, 7)
    if not rows:
        s.code(text)
        return s
    from bench.bench_rejection_sample import copy_bandwidth_gbs

    table = []
    for P, n, t_op, t_public, t_loop, loop_op, loop_public in rows:
        nbytes = int(P) * int(n) * 5
        floor_us = nbytes / (copy_bandwidth_gbs(nbytes, 5, 0.02) * 1e9) * 1e6
        table.append(
            [P, n, t_op, t_public, t_loop, loop_op, loop_public, f"{floor_us:.2f}", f"{float(t_op) / floor_us:.0f}x"]
        )
    s.table(
        ["P", "n", "op us", "topk_prune us", "topk loop us", "loop/op", "loop/topk_prune", "floor us", "op/floor"],
        table,
    )
    return s


def section_compaction(quick: bool) -> Section:
    s = Section(
        "KV-cache compaction microbenchmark (CPU)",
        "Median time of `sd.compact_kv_cache_` (in place) vs `index_select` + `copy_` on 32-64 MiB caches, "
        "and the floor: a plain `copy_` of exactly the bytes that must move (rows with kept[i] != i).",
    )
    from bench import bench_compact_kv as module

    reps, seconds = (3, 0.2) if quick else (10, 1.0)
    layouts = module.LAYOUTS[:1] if quick else module.LAYOUTS
    table = []
    print(f"compaction: {len(layouts) * len(module.PATTERNS)} cases", flush=True)
    for name, shape, batch_dim, dtype in layouts:
        for pattern in module.PATTERNS:
            moved, t_compact, t_copy, t_index = module.bench_case(shape, batch_dim, dtype, pattern, reps, seconds)
            gbs = lambda ms: moved / ms / 1e6  # noqa: E731
            row = [
                name,
                pattern,
                f"{moved / 2**20:.1f}",
                f"{t_compact:.2f}",
                f"{gbs(t_compact):.1f}",
                f"{t_index:.2f}",
                f"{t_index / t_compact:.2f}x",
                f"{t_copy:.2f}",
                f"{t_compact / t_copy:.2f}x",
            ]
            table.append(row)
            print("  " + "  ".join(row), flush=True)
    header = [
        "layout",
        "kept set",
        "MiB moved",
        "compact ms",
        "GB/s",
        "index_select ms",
        "index/compact",
        "floor (copy) ms",
        "compact/floor",
    ]
    print_table(header, table)
    s.table(header, table)
    return s


# ----------------------------------------------------------------------------- GPU report, seed


def section_gpu(quick: bool) -> Section:
    from bench import gpu_report

    s = Section(
        "GPU readiness report (no GPU: compiler output and a bytes MODEL)",
        "Every Triton launch in the kernels' `aot_cases()` compiled ahead of time "
        f"({'sm_90 only in --quick' if quick else 'sm_80, sm_90, gfx942'}): registers, spills, shared memory, "
        "the widths of its global loads (16 B = vectorised streaming; 8/4/2/1 B are metadata, gathers, or "
        "unvectorised streams). Then a model, **not a measurement**: DRAM bytes "
        "per call for the minimum, this package's kernel and the peers' designs, and the H100 time floor at "
        "3.35 TB/s (launch latency not included).",
    )
    out = gpu_report.run(quick)
    rows = out["compile"]
    ok = [r for r in rows if r["ok"]]
    spilling = [f"{r['name']}@{r['target']}" for r in ok if r["spills"]]
    narrow = [f"{r['name']}@{r['target']}" for r in ok if r["widest_load"] < 16]
    summary = (
        f"{len(ok)} of {len(rows)} (case, target) compiles succeeded; spills: "
        f"{', '.join(spilling) if spilling else 'none'}. Without any 16-byte load: "
        f"{', '.join(narrow) if narrow else 'none'}."
    )
    print("\n" + summary, flush=True)
    s.text(
        summary + " (Narrow-only cases are expected for `topk_prune`, which reads one reward per lane "
        "and is launch-bound, and for the BLOCK=128 compaction tile, whose 128 lanes cover head_dim-sized runs; "
        "any other streaming kernel without 16-byte loads reads its rows with narrow loads.)"
    )
    s.table(gpu_report.COMPILE_HEADER, out["compile_table"], "**Compiled kernels**")
    s.text(
        f"Bytes model assumptions: per-draft-token acceptance {out['acceptance']} (i.i.d.), so a row samples a "
        "residual with probability 1 - a^K and the bonus row otherwise; a gather costs one 32-byte sector; "
        "`specdecode kernel (<=)` counts both passes over the sampled row (sum, then a scan that stops at the hit "
        "and may be served from L2), an upper bound; peers' designs as read in "
        "`/work/shared/research/peers_rejection.md` §1-4, with element-wise ops fused (their real traffic is at "
        "least this). Compaction rows are a Llama-3-8B KV cache row: 32 layers x (K, V) x 8 heads x S x 128 x bf16."
    )
    for op, table in out["bytes"].items():
        s.table(gpu_report.BYTES_HEADER, table, f"**{op}: bytes moved per call (model)**")
    if len(ok) < len(rows) or spilling:
        s.text(f"**{len(rows) - len(ok)} case(s) failed to compile, {len(spilling)} spilled.**")
    return s


def section_seed(quick: bool) -> Section:
    from bench import seed_experiment as se

    samples = 200_000 if quick else 1_000_000
    s = Section(
        "Seed 2's experiments: losslessness",
        f"{samples:,} speculative samples of the first token for four fixed (p, q) pairs: std of "
        f"(empirical - q) over the vocabulary (the seed reports {se.SEED_REPORTED_STD:.3e} for Llama-3-8B + "
        "EAGLE at 1M samples; the number scales with 1/sqrt(N) and the vocabulary) next to the sampling-noise "
        "expectation sqrt(mean q(1-q)/N), and the chi-square goodness-of-fit p-value (large = consistent "
        "with q). Then greedy: plain and speculative decoding must give identical text.",
    )
    out = se.run(samples, greedy_tokens=80 if quick else 160)
    if out["note"]:
        s.text(f"NOTE: {out['note']}.")
    s.table(se.SAMPLING_HEADER, se.sampling_table(out["pairs"]))
    s.image(plots.plot_seed_bars(out["pairs"], os.path.join(OUT_DIR, "seed_first_token.png")))
    greedy = out["greedy"]
    if greedy is None:
        s.text("Greedy: shipped weights not found, skipped.")
    else:
        s.text(
            f"Greedy, temperature 0, K = {greedy['K']}: **tokens identical = {greedy['identical_tokens']}** "
            f"(mean accepted length {greedy['mean_accepted_length']:.2f})."
        )
        for prompt, a, b in zip(greedy["prompts"], greedy["plain"], greedy["speculative"]):
            s.text(f"Prompt `{prompt!r}`:")
            s.code(f"{'sd.generate':<56} | sd.speculative_generate\n{'-' * 56}-+-{'-' * 56}\n" + se.side_by_side(a, b))
    return s


# ----------------------------------------------------------------------------- end to end


def parse_e2e_output(text: str) -> list[dict]:
    """Rows of bench_e2e's printed tables: batch, temperature, k (0 = plain), tokens/s, histogram."""
    rows, temperature = [], None
    for line in text.splitlines():
        if line.startswith("## "):
            temperature = 0.0 if "greedy" in line else float(line.split("T=")[1].split(",")[0])
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if temperature is None or len(cells) < 4 or not cells[0].isdigit():
            continue
        method = cells[1]
        k = 0 if method == "plain" else int(method.split("K=")[1])
        hist = [int(x) for x in cells[6].strip("[]").split(",")] if k and len(cells) > 6 and cells[6] else None
        rows.append(
            {
                "batch": int(cells[0]),
                "temperature": temperature,
                "k": k,
                "tokens_per_s": float(cells[2]),
                "hist": hist,
                "same_text": cells[7] if len(cells) > 7 else "",
            }
        )
    return rows


def section_e2e(quick: bool) -> Section:
    s = Section(
        "Speculative decoding end to end (CPU, shipped pair)",
        "Tokens/s of `sd.speculative_generate` vs `sd.generate` on the shipped (target, draft) pair for "
        "several K and batch sizes, mean accepted length, acceptance rate and the accepted-length "
        "histogram (from `bench/bench_e2e.py`).",
    )
    from bench import bench_e2e as module
    from bench.seed_experiment import weights_available

    if not weights_available():
        s.text(
            "Shipped weights (specdecode/decoder/weights/*.pt) not found: section skipped "
            "(train them with `python -m specdecode.decoder.train`)."
        )
        return s
    _, text = call_main(module, quick)
    s.text(as_markdown(text))  # its markdown tables, as printed
    rows = parse_e2e_output(text)
    s.image(plots.plot_e2e_throughput(rows, os.path.join(OUT_DIR, "e2e_tokens_per_s.png")))
    hists = {
        f"K={r['k']}, batch {r['batch']}, " + ("greedy" if r["temperature"] == 0 else f"T={r['temperature']:g}"): r[
            "hist"
        ]
        for r in rows
        if r["hist"] and r["batch"] == min(x["batch"] for x in rows)
    }
    s.image(plots.plot_acceptance_histogram(hists, os.path.join(OUT_DIR, "e2e_acceptance_histogram.png")))
    return s


# ----------------------------------------------------------------------------- Speculative Rejection


def pearson(xs, ys) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def _correlations(per_prompt_partial: list[list[float]], finals: list[list[float]]) -> tuple[float, float]:
    """(mean over prompts of the within-prompt Pearson r, pooled r) of partial vs final rewards."""
    within = [pearson(x, y) for x, y in zip(per_prompt_partial, finals) if len(x) > 2]
    within = [r for r in within if not math.isnan(r)]
    pooled = pearson(sum(per_prompt_partial, []), sum(finals, []))
    return (sum(within) / len(within) if within else float("nan")), pooled


@torch.no_grad()
def partial_vs_final_likelihood(
    num_prompts: int, n: int, length: int, taus: tuple[int, ...], temperature: float = 1.0, seed: int = 0
) -> dict:
    """The seed's Figure 2 with the seed's likelihood reward (its Table 2 setting): ``n`` sampled
    responses per prompt from the target, each scored by its mean log-likelihood under the target
    over its first ``tau`` tokens (partial, for every ``tau`` in ``taus``) and over the whole
    response (final).

    Runs ``speculative_rejection`` with ``alpha = 0`` and decision points at ``taus``: nothing is
    pruned, ``stats["rounds"][i]["rewards"]`` holds the partial rewards of the rows still live at
    ``taus[i]`` (candidate order) and ``candidate_rewards`` the final ones. Candidates that
    finished (EOS) before a ``tau`` have no partial reward there and are left out of it.
    Returns per ``tau``: the pooled points, their prompt, and both correlations."""
    from bench.prompts import PROMPTS
    from bench.seed_experiment import load_pair
    from specdecode.decoder.best_of_n import speculative_rejection
    from specdecode.decoder.rewards import LogLikelihoodReward

    target, _ = load_pair()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(num_prompts)]
    gen = torch.Generator().manual_seed(seed)
    out = speculative_rejection(
        target,
        LogLikelihoodReward(target),
        prompts,
        n,
        0.0,
        length,
        decision_tokens=tuple(taus),
        temperature=temperature,
        generator=gen,
    )
    per_tau = {}
    for tau, round_stats in zip(taus, out.stats["rounds"]):
        xs_per_prompt, ys_per_prompt = [], []
        for g, rewards in enumerate(round_stats["rewards"]):
            live = (out.candidate_num_tokens[g] > tau).nonzero().flatten().tolist()
            if len(live) != len(rewards):
                raise RuntimeError(
                    f"prompt {g}: {len(rewards)} partial rewards for {len(live)} candidates live at {tau}"
                )
            xs_per_prompt.append([float(r) for r in rewards])
            ys_per_prompt.append([float(out.candidate_rewards[g, c]) for c in live])
        within, pooled = _correlations(xs_per_prompt, ys_per_prompt)
        per_tau[tau] = {
            "partial": sum(xs_per_prompt, []),
            "final": sum(ys_per_prompt, []),
            "group": [g for g, xs in enumerate(xs_per_prompt) for _ in xs],
            "within_corr": within,
            "corr": pooled,
        }
    return {"per_tau": per_tau, "length": length, "prompts": num_prompts, "n": n}


def section_spr(quick: bool) -> Section:
    s = Section(
        "Speculative Rejection vs Best-of-N",
        "Reward reached vs compute (tokens generated, wall time) for Best-of-N and Speculative Rejection "
        "(from `bench/bench_best_of_n.py`), and the seed's Figure 2: the reward of a partial response at a "
        "decision token tau against the final reward, with their correlation.",
    )
    from bench import bench_best_of_n as module
    from bench import seed_experiment

    argv = (
        (["--quick"] if quick else [])
        + (["--threads", str(THREADS)] if THREADS else [])
        + (["--weights-dir", seed_experiment.WEIGHTS_DIR] if seed_experiment.WEIGHTS_DIR else [])
    )
    result, text = capture(module.main, argv)
    s.text(as_markdown(text) if "|" in text else f"```\n{text}\n```")
    curves = spr_curves(result, text)
    if curves["tokens"]:
        s.image(
            plots.plot_reward_vs_compute(
                curves["tokens"], os.path.join(OUT_DIR, "spr_reward_vs_tokens.png"), "tokens generated (all candidates)"
            )
        )
    if curves["seconds"]:
        s.image(
            plots.plot_reward_vs_compute(
                curves["seconds"], os.path.join(OUT_DIR, "spr_reward_vs_seconds.png"), "wall time (s)"
            )
        )
    for axis in ("tokens", "seconds"):
        table = speedup_at_equal_reward(curves[axis])
        if table:
            s.table(
                ["run", axis, "reward", f"Best-of-N {axis} for that reward", "speedup at equal reward"],
                table,
                f"**Speedup at equal reward ({axis}; Best-of-N interpolated log-linearly in {axis})**",
            )
            print_table(["run", axis, "reward", f"Best-of-N {axis}", "speedup"], table)
    if not (curves["tokens"] or curves["seconds"]):
        s.text("(No reward-vs-compute columns recognised in bench_best_of_n's output: no figure.)")
    from bench.seed_experiment import weights_available

    if not weights_available():
        s.text("Partial vs final reward: shipped weights not found, skipped.")
        return s
    prompts, n, length, taus, shown = (4, 16, 96, (8, 24, 48), 24) if quick else (8, 64, 256, (16, 32, 64, 128), 64)
    print(
        f"partial vs final likelihood reward: {prompts} prompts x {n} responses of up to {length} tokens, "
        f"tau = {taus} ...",
        flush=True,
    )
    pf = partial_vs_final_likelihood(prompts, n, length, taus)
    table = [
        [tau, len(r["partial"]), f"{r['within_corr']:.3f}", f"{r['corr']:.3f}"] for tau, r in pf["per_tau"].items()
    ]
    header = ["decision token tau", "responses live at tau", "Pearson r within a prompt (mean)", "pooled r"]
    print_table(header, table)
    s.text(
        f"Partial vs final reward (reward = mean log-likelihood under the target, the seed's Table 2 setting; "
        f"{prompts} prompts x {n} sampled responses of up to {length} tokens, T = 1). The within-prompt r is what "
        f"pruning relies on (it ranks the candidates of one prompt); pooling prompts adds between-prompt spread."
    )
    s.table(header, table)
    r = pf["per_tau"][shown]
    s.image(
        plots.plot_partial_vs_final(
            r["partial"],
            r["final"],
            r["within_corr"],
            shown,
            os.path.join(OUT_DIR, "spr_partial_vs_final.png"),
            groups=r["group"],
        )
    )
    return s


def _number(cell: str) -> float | None:
    """A float from a table cell such as ``1,234``, ``-0.52``, ``3.1x``, ``12.5 s`` or ``1.2k``."""
    text = cell.strip().replace(",", "").replace("*", "")
    for suffix, scale in (("k", 1e3), ("M", 1e6), ("G", 1e9)):
        if text.endswith(suffix) and text[:-1].replace(".", "", 1).replace("-", "", 1).isdigit():
            return float(text[:-1]) * scale
    text = text.rstrip("xs ").strip()
    try:
        return float(text)
    except ValueError:
        return None


def _find_column(header: list[str], *words: str, avoid: tuple[str, ...] = ()) -> int | None:
    for i, name in enumerate(header):
        low = name.lower()
        if all(w in low for w in words) and not any(a in low for a in avoid):
            return i
    return None


def spr_curves(result, text: str) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Reward-vs-compute curves from the SpR bench, for the plots: ``{"tokens": {label: [(x, reward)]},
    "seconds": {...}}``. From its return value if that is a list of dicts with ``method``,
    ``tokens``/``seconds`` and ``reward`` keys; otherwise from its printed markdown tables (a
    ``reward`` column, a ``tokens`` and/or ``seconds``/``time`` column, and ``method``/``alpha``/``N``
    columns for the labels)."""
    curves: dict = {"tokens": {}, "seconds": {}}
    if isinstance(result, list) and result and all(isinstance(r, dict) for r in result):
        for r in result:
            if "reward" in r and "method" in r:
                for axis in ("tokens", "seconds"):
                    if axis in r:
                        curves[axis].setdefault(str(r["method"]), []).append((float(r[axis]), float(r["reward"])))
        return curves
    for header, rows in plots.parse_markdown_tables(text):
        reward = _find_column(header, "reward", avoid=("partial", "/", "gap", "corr"))
        tokens = _find_column(header, "token", avoid=("/", "per", "decision", "tau"))
        seconds = _find_column(header, "second") or _find_column(header, "time", avoid=("/",))
        method = _find_column(header, "method")
        alpha = _find_column(header, "alpha") or _find_column(header, "α")
        if reward is None or (tokens is None and seconds is None):
            continue
        for row in rows:
            label = (
                " ".join(
                    x
                    for x in (
                        (row[method] if method is not None else ""),
                        (f"alpha={row[alpha]}" if alpha is not None and _number(row[alpha]) is not None else ""),
                    )
                    if x
                ).strip()
                or "runs"
            )
            y = _number(row[reward]) if reward < len(row) else None
            for axis, col in (("tokens", tokens), ("seconds", seconds)):
                x = _number(row[col]) if col is not None and col < len(row) else None
                if x is not None and y is not None and x > 0:
                    curves[axis].setdefault(label, []).append((x, y))
    return curves


def speedup_at_equal_reward(curves: dict[str, list[tuple[float, float]]]) -> list[list]:
    """For every non-Best-of-N point (compute x, reward y): the compute Best-of-N needs to reach
    reward y, interpolated log-linearly in compute along its curve (rewards made monotone by a
    running max), and the ratio. Points beyond Best-of-N's range get a bound (">" or "<")."""
    bon_label = next((k for k in curves if k.lower().replace(" ", "").startswith("best-of")), None)
    if bon_label is None:
        return []
    bon = sorted(curves[bon_label])
    xs, ys, best = [], [], -math.inf
    for x, y in bon:
        best = max(best, y)
        xs.append(x)
        ys.append(best)
    rows = []
    for label, points in curves.items():
        if label == bon_label:
            continue
        for x, y in sorted(points):
            if y > ys[-1]:
                rows.append([label, f"{x:.4g}", f"{y:.4g}", f"> {xs[-1]:.4g}", f"> {xs[-1] / x:.2f}x"])
                continue
            if y <= ys[0]:
                rows.append([label, f"{x:.4g}", f"{y:.4g}", f"<= {xs[0]:.4g}", f"<= {xs[0] / x:.2f}x"])
                continue
            i = next(j for j in range(1, len(ys)) if ys[j] >= y)
            frac = (y - ys[i - 1]) / (ys[i] - ys[i - 1]) if ys[i] > ys[i - 1] else 1.0
            needed = math.exp(math.log(xs[i - 1]) + frac * (math.log(xs[i]) - math.log(xs[i - 1])))
            rows.append([label, f"{x:.4g}", f"{y:.4g}", f"{needed:.4g}", f"{needed / x:.2f}x"])
    return rows


# ----------------------------------------------------------------------------- runner


SECTIONS = {
    "verifier": section_verifier,
    "pruning": section_pruning,
    "compaction": section_compaction,
    "gpu": section_gpu,
    "seed": section_seed,
    "e2e": section_e2e,
    "spr": section_spr,
}
ALIASES = {"ops": ["verifier", "pruning", "compaction"]}


def write_report(sections: list[Section], quick: bool, argv: list[str], seconds: float) -> str:
    os.makedirs(OUT_DIR, exist_ok=True)
    lines = [
        "# specdecode benchmark report",
        "",
        f"Command: `python -m bench {' '.join(argv)}`" + (" (quick mode: small sizes)" if quick else ""),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}, no GPU. "
        f"Wall time {seconds:.0f} s. Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
    ]
    for sec in sections:
        lines += [f"## {sec.title}{' (FAILED)' if sec.failed else ''}", "", sec.about, ""]
        for chunk in sec.body:
            lines += [chunk, ""]
        lines += [f"![{os.path.basename(p)}]({os.path.relpath(p, OUT_DIR)})" for p in sec.images] + [""]
    path = os.path.join(OUT_DIR, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes in all")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    parser.add_argument(
        "--weights",
        default=None,
        help="(target, draft) directory for the seed and spr sections instead of the shipped pair "
        "(bench_e2e always uses the shipped pair)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for every section, passed on to the benchmarks that take --threads "
        "(default: each benchmark's own; on a shared machine 1 avoids OpenMP spin stalls)",
    )
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)}, ops (default: all)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.list:
        print(__doc__.split("\n\n")[2])
        return 0
    chosen: list[str] = []
    for name in args.sections or list(SECTIONS):
        for n in ALIASES.get(name, [name]):
            if n not in SECTIONS:
                parser.error(f"unknown section {n!r}; choose from {', '.join(SECTIONS)}, ops")
            if n not in chosen:
                chosen.append(n)
    global THREADS
    THREADS = args.threads
    if THREADS:
        torch.set_num_threads(THREADS)
    if args.weights:
        from bench import seed_experiment

        seed_experiment.WEIGHTS_DIR = args.weights
    if not plots.have_matplotlib():
        print("(matplotlib not installed: tables only; `pip install -e .[bench]` for the figures)")
    start = time.perf_counter()
    done: list[Section] = []
    for i, name in enumerate(chosen):
        print(f"\n===== [{i + 1}/{len(chosen)}] {name} =====", flush=True)
        t0 = time.perf_counter()
        try:
            done.append(SECTIONS[name](args.quick))
        except Exception:  # report it, keep going with the other sections
            tb = traceback.format_exc()
            print(tb, file=sys.stderr, flush=True)
            failed = Section(name, "This section raised an exception.", failed=True)
            failed.code(tb[-3000:])
            done.append(failed)
        print(f"===== {name}: {time.perf_counter() - t0:.0f} s =====", flush=True)
    path = write_report(done, args.quick, argv, time.perf_counter() - start)
    print(f"\nreport: {path}" + "".join(f"\nfigure: {p}" for s in done for p in s.images))
    return 1 if any(s.failed for s in done) else 0


if __name__ == "__main__":
    sys.exit(main())
