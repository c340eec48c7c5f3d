"""Token trees vs chains end to end on the shipped pair: accepted length, tokens/s, verify cost.

    python -m bench.bench_tree_decoding                 # batch 1 and 4; chains K = 2..8 (+ 11, 12, 14)
    python -m bench.bench_tree_decoding --batch-sizes 1 # batch 1 only (~4 min on an idle machine)
    python -m bench.bench_tree_decoding --batch-sizes 1 --repeats 8 --confirm 24  # + a head-to-head
    python -m bench.bench_tree_decoding --quick         # batch 1; K = 4, 8; five trees (~1 min)

The full run takes about 13 minutes on a loaded 2-core machine.

One torch thread (``--threads``). In one run, for each batch size, every method decodes the same
prompts: plain decoding, chains (``speculative_generate(num_draft_tokens=K)``; K = 11, 12, 14 as
well, chains that verify as many tokens as the larger trees, outside the issue's K = 2..8), static
top-k trees, EAGLE-2-style dynamic trees (depth 8, and as deep as the long chains) ranked by the
calibrated acceptance table (greedy's default) and by the draft's softmax, and chains with siblings
(``speculative_generate(tree=TreeSpec...)``; ``specdecode.decoder.tree``), alternating within each
repeat so all see the same machine load (repeat ``r`` decodes prompts ``r * batch ..``, so batch 1
covers three prompts); tokens/s is the median over repeats, the speedup is against plain decoding,
the mean accepted length (tokens emitted per row-step) is summed over repeats, and ms per step is
the decoding time over the steps (a step drafts, verifies and accepts; the prompt's prefill is
spread over them); the goal lines add the best tree's tokens/s over the best chain's repeat by
repeat (same prompts), whose range shows the run-to-run spread. ``verified`` is the tokens the
target reads per step (K + 1, or T + 1 for a tree of T nodes): the cost side of the trade. A
``kind="verify"`` table gives the target's forward time per node count (a chain's causal forward and
a tree-attention forward of the same size), the price of a larger tree. Greedy rows also count the
rows whose text equals plain decoding's.

Rows: ``run(...)`` returns them and saves ``bench/out/tree_decoding.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics

import torch

import specdecode as sd
from bench.prompts import PROMPTS, weights_available
from bench.report import OUT_DIR, Log, Section, of_kind, save_rows
from bench.timing import median_ms, torch_threads
from specdecode.decoder.model import TreeAttention
from specdecode.decoder.tree import TreeSpec, static_parents, tree_layout

TOPIC = "tree_decoding"

STATIC_BRANCHINGS = [(2, 1), (2, 1, 1, 1), (2, 1, 1, 1, 1, 1, 1, 1), (2, 2, 1, 1, 1, 1, 1, 1), (4, 2, 1, 1, 1, 1, 1, 1)]
DYNAMIC_BUDGETS = [4, 8, 16, 32, 64]
DYNAMIC_TOP_K, DYNAMIC_DEPTH = 4, 8
# (node budget, top_k, depth): dynamic trees as deep as the longer chains below -- this draft's
# top-1 is the target's greedy token ~88% of the time, so a tree needs depth before breadth pays
DEEP_DYNAMIC = [(11, 2, 11), (12, 2, 12), (14, 3, 12)]
SOFTMAX_BUDGETS = [4, 8]  # EAGLE-2's ranking by the draft's (sharpened) softmax, for comparison
# (depth, extra nodes, keep the whole chain): True = the chain plus its most valuable siblings (the
# draft's runner-ups when greedy, drawn without replacement when sampling); False = the most valuable
# depth + extra nodes of the greedy chain and its runner-ups, at the draft cost of a chain of that depth
CHAIN_WITH_SIBLINGS = [(8, 0, False), (6, 2, True), (8, 3, True), (10, 1, True), (11, 0, False)]
# chains that verify as many tokens per step as the larger trees (outside the K = 2..8): the
# equal-verified-tokens comparison needs them
EXTRA_KS = [11, 12, 14]


def methods(
    ks, static_branchings, dynamic_budgets, softmax_budgets=(), chain_with_siblings=(), extra_ks=(), deep_dynamic=()
) -> list[dict]:
    """Every method to compare: ``{"method", "label", "k" | "tree", "verified"}``. ``method`` is
    ``chain`` (the issue's K range), ``long_chain`` (``extra_ks``), ``static``, ``dynamic``
    (calibrated ranking when greedy), ``dynamic_softmax`` or ``chain_siblings``."""
    out = [{"method": "chain", "label": f"chain K={k}", "k": k, "verified": k + 1} for k in ks]
    out += [{"method": "long_chain", "label": f"chain K={k}", "k": k, "verified": k + 1} for k in extra_ks]
    specs = [("static", TreeSpec.static(tuple(b))) for b in static_branchings]
    specs += [("dynamic", TreeSpec.dynamic(b, top_k=DYNAMIC_TOP_K, depth=DYNAMIC_DEPTH)) for b in dynamic_budgets]
    specs += [("dynamic", TreeSpec.dynamic(b, top_k=k, depth=d)) for b, k, d in deep_dynamic]
    specs += [
        ("dynamic_softmax", TreeSpec.dynamic(b, top_k=DYNAMIC_TOP_K, depth=DYNAMIC_DEPTH, greedy_ranking="softmax"))
        for b in softmax_budgets
    ]
    specs += [("chain_siblings", TreeSpec.chain_with_siblings(d, e, keep_chain=c)) for d, e, c in chain_with_siblings]
    for method, spec in specs:
        label = spec.label() + (", softmax rank" if method == "dynamic_softmax" else "")
        out.append({"method": method, "label": label, "tree": spec, "verified": spec.num_nodes + 1})
    return out


TREE_METHODS = ("static", "dynamic", "dynamic_softmax", "chain_siblings")


def _decode(target, draft, prompts, max_new_tokens: int, temperature: float, generator, method: dict):
    if "k" in method:
        options = {"num_draft_tokens": method["k"]}
    else:
        options = {"tree": method["tree"]}
    return sd.speculative_generate(
        target, draft, prompts, max_new_tokens, temperature=temperature, generator=generator, eos_id=None, **options
    )


def decode_rows(target, draft, batch: int, chosen: list[dict], temperature: float, max_new_tokens: int, repeats: int):
    """``kind="decode"`` rows for one batch size: plain decoding and one row per method. Repeat ``r``
    decodes prompts ``r * batch ..`` (mod 8), the same for every method, so the accepted lengths
    cover several prompts even at batch 1."""
    rates = {m["label"]: [] for m in chosen}
    plain_rates = []
    emitted, row_steps, same = dict.fromkeys(rates, 0), dict.fromkeys(rates, 0), dict.fromkeys(rates, 0)
    seconds, steps = dict.fromkeys(rates, 0.0), dict.fromkeys(rates, 0)  # per step: draft + verify + accept
    for rep in range(repeats + 1):  # rep 0 warms up
        generator = torch.Generator().manual_seed(rep)
        prompts = [PROMPTS[(rep * batch + i) % len(PROMPTS)] for i in range(batch)]
        new_tokens = max_new_tokens if rep else min(8, max_new_tokens)  # rep 0: a short warm-up
        plain = sd.generate(target, prompts, new_tokens, temperature=temperature, generator=generator, eos_id=None)
        if rep:
            plain_rates.append(plain.stats["tokens_per_second"])
        for method in chosen:
            generator = torch.Generator().manual_seed(rep)
            out = _decode(target, draft, prompts, new_tokens, temperature, generator, method)
            if not rep:
                continue
            label = method["label"]
            rates[label].append(out.stats["tokens_per_second"])
            hist = out.stats["accepted_hist"]
            emitted[label] += sum((a + 1) * c for a, c in enumerate(hist))
            row_steps[label] += sum(hist)
            seconds[label] += out.stats["seconds"]
            steps[label] += out.stats["steps"]
            same[label] += int((out.tokens == plain.tokens).all(1).sum()) if temperature == 0 else 0
    common = {"kind": "decode", "batch": batch, "temperature": temperature, "max_new_tokens": max_new_tokens}
    plain_rate = statistics.median(plain_rates)
    rows = [{**common, "method": "plain", "label": "plain", "verified": 1, "tokens_per_s": plain_rate, "speedup": 1.0}]
    rows[0]["mean_accepted_length"] = 1.0
    for method in chosen:
        label = method["label"]
        rate = statistics.median(rates[label])
        rows.append(
            {
                **common,
                "method": method["method"],
                "label": label,
                "verified": method["verified"],
                "tokens_per_s": rate,
                "tokens_per_s_each": rates[label],  # one per repeat, the same prompts for every method
                "speedup": rate / plain_rate,
                "mean_accepted_length": emitted[label] / row_steps[label],
                "ms_per_step": 1e3 * seconds[label] / steps[label],
                "same_text": same[label] if temperature == 0 else None,
                "rows_compared": batch * repeats,
            }
        )
    return rows


def head_to_head_rows(target, draft, pair: list[dict], rounds: int, temperature: float, max_new_tokens: int):
    """``kind="head_to_head"`` rows: fresh timings of two methods chosen by an earlier run (its best
    tree and best chain at batch 1), so the choice's luck with the machine's noise does not carry
    over. Round ``r`` decodes prompt ``r`` (mod 8) with both, back to back, the order alternating;
    one row per round with both tokens/s."""
    rows = []
    for r in range(rounds + 1):  # round 0 warms up
        prompt = [PROMPTS[r % len(PROMPTS)]]
        order = pair if r % 2 == 0 else pair[::-1]
        rates = {}
        for method in order:
            generator = torch.Generator().manual_seed(r)
            out = _decode(target, draft, prompt, max_new_tokens, temperature, generator, method)
            rates[method["label"]] = out.stats["tokens_per_second"]
        if r:
            first, second = (rates[m["label"]] for m in pair)
            rows.append(
                {"kind": "head_to_head", "batch": 1, "round": r, "first": pair[0]["label"], "second": pair[1]["label"]}
                | {"first_tokens_per_s": first, "second_tokens_per_s": second, "ratio": first / second}
            )
    return rows


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(median, low, high)``: the sample median and a distribution-free interval for the true median
    from order statistics -- ``[x_(j), x_(n+1-j)]`` with the largest ``j`` whose two-sided binomial
    tail ``2 P(Binomial(n, 1/2) < j)`` is at most ``1 - confidence`` (the whole range if none).

    >>> median_interval([float(x) for x in range(1, 11)])
    (5.5, 2.0, 9.0)
    """
    x, n = sorted(values), len(values)
    j = 0
    while j + 1 <= n and 2 * sum(math.comb(n, i) for i in range(j + 1)) / 2**n <= 1 - confidence:
        j += 1
    low, high = (x[j - 1], x[n - j]) if j else (x[0], x[-1])
    return statistics.median(x), low, high


def sign_test_p(wins: int, n: int) -> float:
    """One-sided sign test: ``P(Binomial(n, 1/2) >= wins)``, the chance of at least ``wins`` wins in
    ``n`` rounds if neither method were faster."""
    return sum(math.comb(n, i) for i in range(wins, n + 1)) / 2**n


def head_to_head_line(rows: list[dict]) -> str | None:
    """One line summarising ``kind="head_to_head"`` rows (``None`` without them)."""
    if not rows:
        return None
    ratios = [r["ratio"] for r in rows]
    median, low, high = median_interval(ratios)
    wins = sum(r > 1 for r in ratios)
    # below 6 rounds no pair of order statistics covers the median with 95% confidence
    spread = "95% interval of the median" if len(rows) >= 6 else "range"
    return (
        f"Confirmation, fresh timings ({len(rows)} rounds, one prompt each, back to back, order alternating): "
        f"{rows[0]['first']} / {rows[0]['second']} tokens/s median {median:.3f}, {spread} "
        f"[{low:.3f}, {high:.3f}]; the tree was faster in {wins} of {len(rows)} rounds (sign test p = "
        f"{sign_test_p(wins, len(rows)):.3g})."
    )


@torch.no_grad()
def verify_cost_rows(target, batch_sizes, node_counts, reps: int) -> list[dict]:
    """``kind="verify"``: the target's forward ms for ``n`` tokens at position 200, as a chain (causal)
    and as a tree (tree attention over a static tree of ``n - 1`` nodes, branching ``(n - 1,)``:
    the mask's shape does not change the cost)."""
    rows = []
    for batch in batch_sizes:
        cache = target.new_cache(batch, 200 + max(node_counts) + 1)
        target(torch.randint(0, 256, (batch, 200)), cache=cache)
        start = torch.full((batch,), 200)
        for n in node_counts:
            tokens = torch.randint(0, 256, (batch, n))
            chain_ms = median_ms(lambda: target(tokens, start, cache), reps)
            tree_ms = None
            if n > 1:
                parents = static_parents(TreeSpec.static((n - 1,)), batch)
                depths, ancestors = tree_layout(parents)
                attention = TreeAttention(start - 1, depths, ancestors, torch.arange(n).expand(batch, n))
                tree_ms = median_ms(lambda: target(tokens, cache=cache, tree=attention), reps)
            rows.append({"kind": "verify", "batch": batch, "tokens": n, "chain_ms": chain_ms, "tree_ms": tree_ms})
    return rows


def settings(quick: bool) -> dict:
    """``run``'s arguments for the full run (the README's numbers) or ``--quick``."""
    if quick:
        return {
            "batch_sizes": [1],
            "ks": [4, 8],
            "static_branchings": [(2, 1, 1, 1)],
            "dynamic_budgets": [8, 16],
            "softmax_budgets": [8],
            "chain_with_siblings": [(8, 0, False)],
            "extra_ks": [],
            "deep_dynamic": [],
            "max_new_tokens": 48,
            "repeats": 1,
            "node_counts": [1, 9, 17],
            "forward_reps": 5,
        }
    return {
        "batch_sizes": [1, 4],
        "ks": list(range(2, 9)),
        "static_branchings": STATIC_BRANCHINGS,
        "dynamic_budgets": DYNAMIC_BUDGETS,
        "softmax_budgets": SOFTMAX_BUDGETS,
        "chain_with_siblings": CHAIN_WITH_SIBLINGS,
        "extra_ks": EXTRA_KS,
        "deep_dynamic": DEEP_DYNAMIC,
        "max_new_tokens": 128,
        "repeats": 3,
        "node_counts": [1, 3, 5, 9, 12, 13, 15, 17, 33, 65],
        "forward_reps": 20,
    }


def run(
    batch_sizes=(1, 4),
    ks=tuple(range(2, 9)),
    static_branchings=tuple(STATIC_BRANCHINGS),
    dynamic_budgets=tuple(DYNAMIC_BUDGETS),
    softmax_budgets=(),
    chain_with_siblings=(),
    extra_ks=(),
    deep_dynamic=(),
    confirm_rounds: int = 0,
    temperature: float = 0.0,
    max_new_tokens: int = 128,
    repeats: int = 2,
    node_counts=(1, 3, 5, 9, 17, 33, 65),
    forward_reps: int = 20,
    threads: int | None = 1,
    weights_dir: str | None = None,
    out_dir: str | None = OUT_DIR,
    log: Log = print,
) -> list[dict]:
    """A ``kind="setup"`` row, the ``kind="verify"`` rows of ``verify_cost_rows``, the
    ``kind="decode"`` rows of ``decode_rows`` per batch size and, with ``confirm_rounds``, the
    ``kind="head_to_head"`` rows of the batch-1 best tree against the best chain; no rows without
    weights."""
    if not weights_available(weights_dir):
        log(f"  weights not found in {weights_dir or 'the shipped directory'}: tree decoding skipped", flush=True)
        return save_rows(TOPIC, [], out_dir)
    with torch_threads(threads):
        target, draft = sd.load_pretrained(weights_dir=weights_dir)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        rows = [
            {
                "kind": "setup",
                "threads": torch.get_num_threads(),
                "target_dtype": str(target.dtype)[6:],
                "load_1min_at_start": load,
            }
        ]
        log("  tree decoding: verify cost ...", flush=True)
        rows += verify_cost_rows(target, batch_sizes, node_counts, forward_reps)
        chosen = methods(
            ks, static_branchings, dynamic_budgets, softmax_budgets, chain_with_siblings, extra_ks, deep_dynamic
        )
        for batch in batch_sizes:
            log(f"  tree decoding: batch {batch}, {len(chosen)} methods ...", flush=True)
            rows += decode_rows(target, draft, batch, chosen, temperature, max_new_tokens, repeats)
        batch_one = [r for r in of_kind(rows, "decode") if r["batch"] == 1]
        tree, chain = _best(batch_one, TREE_METHODS), _best(batch_one, "chain")
        if confirm_rounds and tree and chain:
            log(f"  tree decoding: {tree['label']} vs {chain['label']}, {confirm_rounds} rounds ...", flush=True)
            pair = [next(m for m in chosen if m["label"] == r["label"]) for r in (tree, chain)]
            rows += head_to_head_rows(target, draft, pair, confirm_rounds, temperature, max_new_tokens)
    return save_rows(TOPIC, rows, out_dir)


# ---- rendering ----------------------------------------------------------------------------------


def _best(rows: list[dict], method: str | tuple[str, ...]) -> dict | None:
    methods_ = (method,) if isinstance(method, str) else method
    chosen = [r for r in rows if r["method"] in methods_]
    return max(chosen, key=lambda r: r["tokens_per_s"]) if chosen else None


def goal_lines(decoded: list[dict]) -> list[str]:
    """The issue's two goals, checked on the rows: at batch 1 the best tree's tokens/s vs the best
    chain's (K in the issue's range; a longer chain is reported beside it); at equal verified
    tokens per step, each tree's mean accepted length vs the chain's; then the one-line verdict
    (``verdict_line``)."""
    lines = []
    for batch in sorted({r["batch"] for r in decoded}):
        rows = [r for r in decoded if r["batch"] == batch]
        chain, tree = _best(rows, "chain"), _best(rows, TREE_METHODS)
        if chain and tree:
            verdict = "beats" if tree["tokens_per_s"] > chain["tokens_per_s"] else "does not beat"
            lines.append(
                f"Batch {batch}: the best tree ({tree['label']}, {tree['tokens_per_s']:.1f} tokens/s, "
                f"{tree['speedup']:.2f}x plain) {verdict} the best chain ({chain['label']}, "
                f"{chain['tokens_per_s']:.1f} tokens/s, {chain['speedup']:.2f}x): ratio "
                f"{tree['tokens_per_s'] / chain['tokens_per_s']:.2f}{_spread(tree, chain)}."
            )
        for long in (r for r in rows if r["method"] == "long_chain"):
            if tree:
                lines.append(
                    f"Batch {batch}: {long['label']} (outside the issue's K range) {long['tokens_per_s']:.1f} "
                    f"tokens/s, {long['speedup']:.2f}x plain; best tree / it: "
                    f"{tree['tokens_per_s'] / long['tokens_per_s']:.2f}."
                )
        chains = {r["verified"]: r for r in rows if r["method"] in ("chain", "long_chain")}
        for r in rows:
            if r["method"] in TREE_METHODS and r["verified"] in chains:
                c = chains[r["verified"]]
                ratio = r["mean_accepted_length"] / c["mean_accepted_length"]
                lines.append(
                    f"Batch {batch}, {r['verified']} verified tokens per step: {r['label']} accepts "
                    f"{r['mean_accepted_length']:.2f} tokens per step vs {c['label']}'s "
                    f"{c['mean_accepted_length']:.2f} (ratio {ratio:.2f})."
                )
    verdict = verdict_line(decoded)
    return lines + ([verdict] if verdict else [])


def _spread(a: dict, b: dict) -> str:
    """`` (per repeat 0.91-1.12)``: ``a``'s tokens/s over ``b``'s repeat by repeat (same prompts),
    the run-to-run spread a ratio of medians hides."""
    each = [x / y for x, y in zip(a.get("tokens_per_s_each", []), b.get("tokens_per_s_each", []))]
    return f" (per repeat {min(each):.2f}-{max(each):.2f})" if len(each) > 1 else ""


def verdict_line(decoded: list[dict]) -> str | None:
    """``tree vs best chain at batch 1: <x>x; accepted length at equal verified tokens: tree <a> vs
    chain <b>``: the best tree's tokens/s over the best chain's (K = 2..8) at batch 1, and the
    accepted lengths of the calibrated dynamic tree and the chain at the largest verified count they
    share (9 in the full run: budget 8 vs K = 8)."""
    rows = [r for r in decoded if r["batch"] == 1]
    chain, tree = _best(rows, "chain"), _best(rows, TREE_METHODS)
    if not (chain and tree):
        return None
    chains = {r["verified"]: r for r in rows if r["method"] == "chain"}
    shared = [r for r in rows if r["method"] == "dynamic" and r["verified"] in chains]
    ratio = tree["tokens_per_s"] / chain["tokens_per_s"]
    text = f"tree vs best chain at batch 1: {ratio:.2f}x{_spread(tree, chain)} ({tree['label']} vs {chain['label']})"
    if shared:
        d = max(shared, key=lambda r: r["verified"])
        c = chains[d["verified"]]
        text += (
            f"; accepted length at equal verified tokens: tree {d['mean_accepted_length']:.2f} vs chain "
            f"{c['mean_accepted_length']:.2f} ({d['verified']} tokens: {d['label']} vs {c['label']})"
        )
    every_chain = {r["verified"]: r for r in rows if r["method"] in ("chain", "long_chain")}
    pairs = [
        (r, every_chain[r["verified"]]) for r in rows if r["method"] in TREE_METHODS and r["verified"] in every_chain
    ]
    if pairs:
        t, c = max(pairs, key=lambda p: p[0]["mean_accepted_length"] / p[1]["mean_accepted_length"])
        text += (
            f"; best pair: tree {t['mean_accepted_length']:.2f} vs chain {c['mean_accepted_length']:.2f} "
            f"({t['verified']} tokens: {t['label']} vs {c['label']})"
        )
    return text


DECODE_HEADER = [
    "batch",
    "method",
    "verified tokens/step",
    "tokens/s",
    "speedup",
    "mean accepted length",
    "ms per step",
    "same text",
]


def decode_table(rows: list[dict]) -> list[list]:
    table = []
    for r in rows:
        same = "" if r.get("same_text") is None else f"{r['same_text']}/{r['rows_compared']}"
        table.append(
            [
                r["batch"],
                r["label"],
                r["verified"],
                f"{r['tokens_per_s']:.1f}",
                f"{r['speedup']:.2f}x",
                f"{r['mean_accepted_length']:.2f}",
                "" if r.get("ms_per_step") is None else f"{r['ms_per_step']:.1f}",
                same,
            ]
        )
    return table


def section(rows: list[dict], figures_dir: str | None = None) -> Section:
    s = Section(
        "Token trees vs chains end to end (CPU, shipped pair)",
        "Mean accepted length and tokens/s of chains and of static and dynamic (EAGLE-2-style) token "
        "trees in `sd.speculative_generate`, and the target's verify cost per node count (from "
        "`bench/bench_tree_decoding.py`).",
    )
    if not rows:
        s.text("Shipped weights not found: section skipped.")
        return s
    for setup in of_kind(rows, "setup"):
        load = setup.get("load_1min_at_start")
        load_text = "" if load is None else f"; 1-minute load average {load:.2f} at the start"
        s.text(f"{setup['threads']} torch thread(s); target in {setup['target_dtype']}, draft in float32{load_text}.")
    s.table(
        ["batch", "tokens read", "chain forward ms", "tree forward ms", "vs 1 token"],
        [
            [
                r["batch"],
                r["tokens"],
                f"{r['chain_ms']:.1f}",
                "" if r["tree_ms"] is None else f"{r['tree_ms']:.1f}",
                f"{(r['tree_ms'] or r['chain_ms']) / _one_token_ms(rows, r['batch']):.2f}x",
            ]
            for r in of_kind(rows, "verify")
        ],
        "**The target's verify cost** (forward of n tokens at position 200; 'vs 1 token' = the tree "
        "forward's time over a 1-token step's)",
    )
    decoded = of_kind(rows, "decode")
    if decoded:
        temperature, max_new = decoded[0]["temperature"], decoded[0]["max_new_tokens"]
        mode = "greedy" if temperature == 0 else f"T={temperature}"
        s.table(DECODE_HEADER, decode_table(decoded), f"**{mode}, {max_new} new tokens per row**")
        lines = goal_lines(decoded)
        s.text("\n".join(f"- {line}" for line in lines[:-1]))
        s.text(f"**Verdict:** {lines[-1]}")
        confirmation = head_to_head_line(of_kind(rows, "head_to_head"))
        if confirmation:
            s.text(f"**{confirmation}**")
        s.text(
            "A bigger tree pays in tokens/s only while the target's verify cost ('vs 1 token' above) "
            "grows more slowly than the mean accepted length: where the target streams its weights "
            "(bf16 on AMX or a GPU), n tokens cost about what 1 does; a float32 target on a CPU "
            "without AMX is compute-bound and pays for every token it verifies."
        )
    return s


def _one_token_ms(rows: list[dict], batch: int) -> float:
    return next(r["chain_ms"] for r in of_kind(rows, "verify") if r["batch"] == batch and r["tokens"] == 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default); one by default")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 4 (1 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3, 1 with --quick)")
    parser.add_argument(
        "--confirm", type=int, default=0, help="rounds of a fresh head-to-head of the batch-1 best tree and chain"
    )
    args = parser.parse_args(argv)
    kwargs = settings(args.quick) | ({"batch_sizes": args.batch_sizes} if args.batch_sizes else {})
    kwargs |= {"repeats": args.repeats} if args.repeats else {}
    kwargs |= {"confirm_rounds": args.confirm}
    rows = run(**kwargs, temperature=args.temperature, threads=args.threads)
    print(section(rows).terminal())


if __name__ == "__main__":
    main()
