"""Speculative Rejection vs Best-of-N on the shipped target: reward reached vs compute.

    python -m bench.bench_best_of_n             # N = 4..256, alpha = 0.3, 0.5, 0.7, 0.9, 8 prompts
    python -m bench.bench_best_of_n --quick     # N = 4, 16, 64, alpha = 0.5, 0.9, 4 prompts, fewer tokens
    python -m bench.bench_best_of_n --reward rm # the stand-in reward model instead of the likelihood

The paper is Fast Best-of-N Decoding via Speculative Rejection (arXiv 2410.20290). All prompts
of a run share one batch. The reward is the target's mean log-likelihood of the
response (the paper's Table 2 setting: higher reward = lower perplexity), or ``--reward rm``:
a reward model whose trunk is the target's and whose head is random (a stand-in, see
``specdecode.decoder.rewards.RewardModel``). Speculative Rejection decides by memory, as the paper
does: its budget is the KV of its N candidates holding the prompt plus ``max_new_tokens / 4``
tokens, so it prunes early, and again whenever the survivors' KV outgrows the budget.

Both methods run on the same engine with per-candidate randomness from the same seed, so every
candidate Speculative Rejection finishes is exactly the one Best-of-N generates: the reward gap
is the price of pruning alone, not sampling noise. Compute is counted as tokens generated (all
candidates, pruned ones included) and wall time. On this CPU, a decode step's time grows more
slowly than the batch (per-step overheads), so the time saving is smaller than the token saving;
on a GPU the paper's regime is memory-bound large batches.

Columns: reward (mean over prompts of the best response's reward), ppl (mean exp(-reward),
likelihood reward only), tokens, time, forwards (decode steps + prefill), rounds (decision
points), peak KV (largest live KV of the run), and for Speculative Rejection the tokens Best-of-N
needs for the same reward (its curve over N, interpolated in log tokens, as the paper reads its
speedups) with the ratio ``those tokens / SpecRej tokens`` (> 1: Speculative Rejection is cheaper).

Then the paper's Figure 2 (``PartialVsFinal``, skipped by ``--no-correlation``): how well the
likelihood reward of a partial response at a decision token predicts the final one, the premise
of pruning early.

Rows: ``run(...)`` returns them and saves ``bench/out/best_of_n.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

import torch

import specdecode as sd
from bench import plots
from bench.prompts import PROMPTS, weights_available
from bench.report import OUT_DIR, Log, Section, figure_path, of_kind, save_rows
from bench.timing import torch_threads
from specdecode.decoder.best_of_n import kv_bytes_per_token

TOPIC = "best_of_n"


def memory_budget_for(model, prompts, n: int, tokens_per_row: int) -> int:
    """KV bytes of ``n`` candidates per prompt holding the prompt plus ``tokens_per_row`` tokens."""
    prompt_tokens = sum(len(p.encode()) + 1 for p in prompts)  # + BOS
    return kv_bytes_per_token(model) * n * (prompt_tokens + len(prompts) * tokens_per_row)


def make_reward(kind: str, target):
    if kind == "loglik":
        return sd.LogLikelihoodReward(target)
    if kind == "rm":
        return sd.RewardModel.from_language_model(target)
    raise ValueError(f"unknown reward {kind!r}: loglik or rm")


@dataclass(frozen=True)
class PartialVsFinal:
    """Figure 2 of Fast Best-of-N Decoding via Speculative Rejection (arXiv 2410.20290) in the
    paper's Table 2 setting: ``num_prompts`` x ``n`` sampled responses of up to ``length`` tokens,
    each scored by the likelihood reward over its first ``tau`` tokens for every ``tau`` in
    ``taus`` (partial) and over the whole response (final); ``shown_tau`` is the one plotted."""

    num_prompts: int
    n: int
    length: int
    taus: tuple[int, ...]
    shown_tau: int
    temperature: float = 1.0
    seed: int = 0


def settings(quick: bool) -> dict:
    """``run``'s arguments for the full run (the README's numbers) or ``--quick``."""
    if quick:
        return {
            "ns": [4, 16, 64],
            "alphas": [0.5, 0.9],
            "prompts": PROMPTS[:4],
            "max_new_tokens": 32,
            "correlation": PartialVsFinal(4, 16, 96, (8, 24, 48), shown_tau=24),
        }
    return {
        "ns": [4, 8, 16, 32, 64, 128, 256],
        "alphas": [0.3, 0.5, 0.7, 0.9],
        "prompts": PROMPTS[:8],
        "max_new_tokens": 64,
        "correlation": PartialVsFinal(8, 64, 256, (16, 32, 64, 128), shown_tau=64),
    }


def run(
    ns=(4, 8, 16, 32, 64, 128, 256),
    alphas=(0.3, 0.5, 0.7, 0.9),
    prompts=PROMPTS,
    max_new_tokens: int = 64,
    reward: str = "loglik",
    seed: int = 0,
    budget_fraction: float = 1 / 4,
    decision_tokens=None,
    correlation: PartialVsFinal | None = None,
    threads: int | None = 1,
    weights_dir: str | None = None,
    out_dir: str | None = OUT_DIR,
    log: Log = print,
) -> list[dict]:
    """A ``kind="setup"`` row (the run's settings and total ``seconds``), the ``kind="run"`` rows
    of ``compare`` and, given ``correlation``, the ``kind="partial_vs_final"`` rows of
    ``partial_vs_final``; no rows without weights. Saved as ``<out_dir>/best_of_n.json``."""
    if not weights_available(weights_dir):
        log(
            f"  weights not found in {weights_dir or 'the shipped directory'}: train them with "
            "python -m specdecode.decoder.train",
            flush=True,
        )
        return save_rows(TOPIC, [], out_dir)
    with torch_threads(threads):
        target, _ = sd.load_pretrained(weights_dir=weights_dir)
        start = time.perf_counter()
        rows = compare(target, ns, alphas, prompts, max_new_tokens, reward, seed, budget_fraction, decision_tokens, log)
        rule = (
            f"at tokens {list(decision_tokens)}"
            if decision_tokens
            else f"by memory: the KV of its N candidates at prompt + {max(1, int(max_new_tokens * budget_fraction))} "
            "tokens"
        )
        setup = {
            "kind": "setup",
            "prompts": len(prompts),
            "max_new_tokens": max_new_tokens,
            "reward": reward,
            "seed": seed,
            "threads": torch.get_num_threads(),
            "decision_rule": rule,
            "seconds": time.perf_counter() - start,
        }
        if correlation is not None:
            rows += partial_vs_final(target, correlation, log)
    return save_rows(TOPIC, [setup] + rows, out_dir)


def compare(
    target,
    ns,
    alphas,
    prompts,
    max_new_tokens: int,
    reward: str,
    seed: int,
    budget_fraction: float,
    decision_tokens,
    log: Log = print,
) -> list[dict]:
    """One Best-of-N row per N and one Speculative Rejection row per (N, alpha): ``kind="run"``,
    ``method``, ``N``, ``alpha``, ``reward``, ``ppl``, ``tokens``, ``seconds``, ``forwards``,
    ``model_tokens``, ``rounds``, ``live_after_rounds``, ``peak_kv_bytes``, ``memory_budget``.
    Speculative Rejection decides by a memory budget (``budget_fraction`` of the new tokens on
    top of the prompts, for its N candidates), or at ``decision_tokens`` if given."""
    scorer = make_reward(reward, target)
    rows = []
    for n in ns:
        budget = memory_budget_for(target, prompts, n, max(1, int(max_new_tokens * budget_fraction)))
        configs = [("Best-of-N", None)] + [(f"SpecRej a={alpha}", alpha) for alpha in alphas]
        for method, alpha in configs:
            log(f"  N = {n:4d}  {method:<14} ...", end="", flush=True)
            common = dict(max_new_tokens=max_new_tokens, generator=torch.Generator().manual_seed(seed))
            if alpha is None:
                out = sd.best_of_n(target, scorer, prompts, n, **common)
            else:
                when = {"decision_tokens": decision_tokens} if decision_tokens else {"memory_budget": budget}
                out = sd.speculative_rejection(target, scorer, prompts, n, alpha, **when, **common)
            s = out.stats
            rows.append(
                {
                    "kind": "run",
                    "method": method,
                    "N": n,
                    "alpha": alpha,
                    "reward": float(out.rewards.mean()),
                    "ppl": float(torch.exp(-out.rewards).mean()) if reward == "loglik" else None,
                    "tokens": s["tokens_generated"],
                    "seconds": s["seconds"],
                    "forwards": s["forwards"],
                    "model_tokens": s["model_tokens"],
                    "rounds": len(s["rounds"]),
                    "live_after_rounds": [sum(r["kept_per_prompt"]) for r in s["rounds"]],
                    "peak_kv_bytes": s["peak_kv_bytes"],
                    "memory_budget": budget if alpha is not None and not decision_tokens else None,
                }
            )
            log(f" reward {rows[-1]['reward']:.4f}, {rows[-1]['tokens']} tokens, {s['seconds']:.1f} s", flush=True)
    return rows


# ----------------------------------------------------------------------------- partial vs final reward


def pearson(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def correlations(per_prompt_partial: list[list[float]], finals: list[list[float]]) -> tuple[float, float]:
    """(mean over prompts of the within-prompt Pearson r, pooled r) of partial vs final rewards."""
    within = [pearson(x, y) for x, y in zip(per_prompt_partial, finals) if len(x) > 2]
    within = [r for r in within if not math.isnan(r)]
    pooled = pearson(sum(per_prompt_partial, []), sum(finals, []))
    return (sum(within) / len(within) if within else math.nan), pooled


@torch.no_grad()
def partial_vs_final(target, setting: PartialVsFinal, log: Log = print) -> list[dict]:
    """One ``kind="partial_vs_final"`` row per decision token ``tau``: the pooled ``partial`` and
    ``final`` rewards of the responses live at ``tau``, their prompt (``group``), ``within_corr``
    (mean within-prompt Pearson r) and ``corr`` (pooled), ``shown`` for the plotted ``tau``.

    Runs ``speculative_rejection`` with ``alpha = 0`` and decision points at ``taus``: nothing is
    pruned, ``stats["rounds"][i]["rewards"]`` holds the partial rewards of the rows still live at
    ``taus[i]`` (candidate order) and ``candidate_rewards`` the final ones. Candidates that
    finished (EOS) before a ``tau`` have no partial reward there and are left out of it."""
    log(
        f"  partial vs final likelihood reward: {setting.num_prompts} prompts x {setting.n} responses of up to "
        f"{setting.length} tokens, tau = {setting.taus} ...",
        flush=True,
    )
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(setting.num_prompts)]
    out = sd.speculative_rejection(
        target,
        sd.LogLikelihoodReward(target),
        prompts,
        setting.n,
        0.0,
        setting.length,
        decision_tokens=tuple(setting.taus),
        temperature=setting.temperature,
        generator=torch.Generator().manual_seed(setting.seed),
    )
    rows = []
    for tau, round_stats in zip(setting.taus, out.stats["rounds"]):
        xs_per_prompt, ys_per_prompt = [], []
        for g, rewards in enumerate(round_stats["rewards"]):
            live = (out.candidate_num_tokens[g] > tau).nonzero().flatten().tolist()
            if len(live) != len(rewards):
                raise RuntimeError(
                    f"prompt {g}: {len(rewards)} partial rewards for {len(live)} candidates live at {tau}"
                )
            xs_per_prompt.append([float(r) for r in rewards])
            ys_per_prompt.append([float(out.candidate_rewards[g, c]) for c in live])
        within, pooled = correlations(xs_per_prompt, ys_per_prompt)
        rows.append(
            {
                "kind": "partial_vs_final",
                "tau": tau,
                "prompts": setting.num_prompts,
                "n": setting.n,
                "length": setting.length,
                "partial": sum(xs_per_prompt, []),
                "final": sum(ys_per_prompt, []),
                "group": [g for g, xs in enumerate(xs_per_prompt) for _ in xs],
                "within_corr": within,
                "corr": pooled,
                "shown": tau == setting.shown_tau,
            }
        )
    return rows


# ----------------------------------------------------------------------------- rendering


def best_of_n_cost(curve: list[tuple[float, float]], reward: float) -> tuple[str, float]:
    """The compute Best-of-N needs to reach ``reward``, read off its ``curve`` of (compute, reward)
    points (one per N) as the paper reads its speedups: rewards made monotone by a running max,
    compute interpolated linearly in log compute. Returns ``("=", compute)``, or ``("<", its
    cheapest compute)`` / ``(">", its largest compute)`` when ``reward`` is below / above the curve."""
    xs, ys, best = [], [], -math.inf
    for x, y in sorted(curve):
        best = max(best, y)
        xs.append(x)
        ys.append(best)
    if reward < ys[0] - 1e-9:
        return "<", xs[0]
    if reward > ys[-1] + 1e-9:
        return ">", xs[-1]
    i = next((j for j in range(len(ys)) if ys[j] >= reward), len(ys) - 1)
    if i == 0 or ys[i] <= ys[i - 1]:
        return "=", xs[i]
    frac = (reward - ys[i - 1]) / (ys[i] - ys[i - 1])
    return "=", math.exp(math.log(xs[i - 1]) + frac * (math.log(xs[i]) - math.log(xs[i - 1])))


def curves(rows: list[dict], axis: str) -> dict[str, list[tuple[float, float]]]:
    """Reward vs ``axis`` (``"tokens"`` or ``"seconds"``) per method: ``{method: [(x, reward)]}``."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in of_kind(rows, "run"):
        out.setdefault(r["method"], []).append((float(r[axis]), r["reward"]))
    return out


def speedup_at_equal_reward(rows: list[dict], axis: str) -> list[list[str]]:
    """For every Speculative Rejection row: its compute, its reward, the compute Best-of-N needs for
    that reward (``best_of_n_cost``; ">" and "<=" mark bounds) and the ratio."""
    bon = curves(rows, axis).get("Best-of-N")
    if not bon:
        return []
    table = []
    for label, points in curves(rows, axis).items():
        if label == "Best-of-N":
            continue
        for x, y in sorted(points):
            relation, needed = best_of_n_cost(bon, y)
            bound = {"=": "", "<": "<= ", ">": "> "}[relation]
            table.append([label, f"{x:.4g}", f"{y:.4g}", f"{bound}{needed:.4g}", f"{bound}{needed / x:.2f}x"])
    return table


def bon_equivalent(row: dict, bon_rows: list[dict]) -> str:
    """The last column of the main table: Best-of-N tokens for ``row``'s reward and the ratio to its
    tokens (> 1: Speculative Rejection is cheaper), or which end of the Best-of-N curve it is past."""
    if row["alpha"] is None or not bon_rows:
        return ""
    by_tokens = sorted(bon_rows, key=lambda r: r["tokens"])
    relation, tokens = best_of_n_cost([(r["tokens"], r["reward"]) for r in by_tokens], row["reward"])
    if relation == "<":
        return f"below BoN-{by_tokens[0]['N']}"
    if relation == ">":
        return f"above BoN-{by_tokens[-1]['N']}"
    return f"{tokens:.0f} ({tokens / row['tokens']:.2f}x)"


TABLE_HEADER = [
    "method",
    "N",
    "reward",
    "ppl",
    "tokens",
    "time s",
    "forwards",
    "rounds (live after)",
    "peak KV MiB",
    "BoN tokens for this reward (ratio)",
]


def table_rows(rows: list[dict]) -> list[list]:
    runs = of_kind(rows, "run")
    bon_rows = [r for r in runs if r["alpha"] is None]
    table = []
    for r in runs:
        live = " -> ".join(str(x) for x in r["live_after_rounds"])
        table.append(
            [
                r["method"],
                r["N"],
                f"{r['reward']:.4f}",
                "-" if r["ppl"] is None else f"{r['ppl']:.1f}",
                r["tokens"],
                f"{r['seconds']:.2f}",
                r["forwards"],
                f"{r['rounds']}{f' ({live})' if live else ''}",
                f"{r['peak_kv_bytes'] / 2**20:.1f}",
                bon_equivalent(r, bon_rows),
            ]
        )
    return table


def section(rows: list[dict], figures_dir: str | None = None) -> Section:
    s = Section(
        "Speculative Rejection vs Best-of-N",
        "Reward reached vs compute (tokens generated, wall time) for Best-of-N and Speculative Rejection, "
        "and Figure 2 of Fast Best-of-N Decoding via Speculative Rejection (arXiv 2410.20290): the reward "
        "of a partial response at a decision token tau against the final reward, with their correlation "
        "(from `bench/bench_best_of_n.py`).",
    )
    if not rows:
        s.text("Shipped weights not found: section skipped (train them with `python -m specdecode.decoder.train`).")
        return s
    for setup in of_kind(rows, "setup"):
        s.text(
            f"{setup['prompts']} prompts in one batch, up to {setup['max_new_tokens']} new tokens, T = 1, "
            f"reward = {setup['reward']}, seed {setup['seed']}, {setup['threads']} thread(s); SpecRej decides "
            f"{setup['decision_rule']}; {setup['seconds']:.0f} s in all."
        )
    s.table(TABLE_HEADER, table_rows(rows))
    for axis, xlabel in (("tokens", "tokens generated (all candidates)"), ("seconds", "wall time (s)")):
        s.image(
            plots.plot_reward_vs_compute(
                curves(rows, axis), figure_path(figures_dir, f"spr_reward_vs_{axis}.png"), xlabel
            )
        )
    for axis in ("tokens", "seconds"):
        table = speedup_at_equal_reward(rows, axis)
        if table:
            s.table(
                ["run", axis, "reward", f"Best-of-N {axis} for that reward", "speedup at equal reward"],
                table,
                f"**Speedup at equal reward ({axis}; Best-of-N interpolated log-linearly in {axis})**",
            )
    correlated = of_kind(rows, "partial_vs_final")
    if correlated:
        _partial_vs_final_section(s, correlated, figures_dir)
    return s


def _partial_vs_final_section(s: Section, rows: list[dict], figures_dir: str | None) -> None:
    first = rows[0]
    s.text(
        f"Partial vs final reward (reward = mean log-likelihood under the target, the Table 2 setting of the "
        f"Speculative Rejection paper; {first['prompts']} prompts x {first['n']} sampled responses of up to "
        f"{first['length']} tokens, T = 1). The within-prompt r is what pruning relies on (it ranks the candidates "
        "of one prompt); pooling prompts adds between-prompt spread."
    )
    s.table(
        ["decision token tau", "responses live at tau", "Pearson r within a prompt (mean)", "pooled r"],
        [[r["tau"], len(r["partial"]), f"{_number(r['within_corr']):.3f}", f"{_number(r['corr']):.3f}"] for r in rows],
    )
    for r in rows:
        if r["shown"]:
            path = figure_path(figures_dir, "spr_partial_vs_final.png")
            s.image(
                plots.plot_partial_vs_final(
                    r["partial"], r["final"], _number(r["within_corr"]), r["tau"], path, r["group"]
                )
            )


def _number(value: float | None) -> float:
    """A correlation read back from JSON, where an undefined one (NaN) is stored as null."""
    return math.nan if value is None else value


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 4, 16, 64; alpha = 0.5, 0.9; 4 prompts; 32 tokens")
    parser.add_argument("--ns", type=int, nargs="+", help="candidates per prompt")
    parser.add_argument("--alphas", type=float, nargs="+", help="rejection rates")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--num-prompts", type=int)
    parser.add_argument("--reward", choices=["loglik", "rm"], default="loglik")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--budget-fraction",
        type=float,
        default=1 / 4,
        help="memory budget = KV of the N candidates at prompt + this fraction of max-new-tokens",
    )
    parser.add_argument(
        "--decision-tokens", type=int, nargs="+", help="decide at these tokens per row instead of by memory"
    )
    parser.add_argument("--no-correlation", action="store_true", help="skip the partial-vs-final reward experiment")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine OpenMP threads spinning against "
        "other processes made a 2-thread run 13x slower than a 1-thread one)",
    )
    parser.add_argument("--weights-dir", help="a pair trained with python -m specdecode.decoder.train --out DIR")
    args = parser.parse_args(argv)
    kwargs = settings(args.quick)
    overrides = {
        "ns": args.ns,
        "alphas": args.alphas,
        "max_new_tokens": args.max_new_tokens,
        "prompts": PROMPTS[: args.num_prompts] if args.num_prompts else None,
    }
    kwargs |= {k: v for k, v in overrides.items() if v}
    if args.no_correlation:
        kwargs["correlation"] = None
    rows = run(
        **kwargs,
        reward=args.reward,
        seed=args.seed,
        budget_fraction=args.budget_fraction,
        decision_tokens=args.decision_tokens,
        threads=args.threads,
        weights_dir=args.weights_dir,
    )
    print(section(rows).terminal())
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
