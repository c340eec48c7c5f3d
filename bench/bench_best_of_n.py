"""Speculative Rejection vs Best-of-N where the premise can hold: reward reached vs compute.

    python -m bench.bench_best_of_n             # the README's run (~15-20 min on one shared core)
    python -m bench.bench_best_of_n --quick     # the same setting at small sizes, ~1-2 min

The paper is Fast Best-of-N Decoding via Speculative Rejection (arXiv 2410.20290). Its premise:
with responses of hundreds of tokens, N in the thousands and a reward whose partial value
predicts the final one, pruning early by partial reward reaches Best-of-N's reward with a
fraction of the generated tokens. The setting here:

- **responses of up to 256 tokens, N = 16 ... 1024 candidates per prompt**, all prompts in one
  batch, T = 1;
- **decisions by memory budget**, as the paper decides: the budget is the KV of the N
  candidates holding the prompt plus ``budget_fraction`` (1/8) of the new tokens, so Speculative
  Rejection starts with N candidates where Best-of-N could keep only the ``bon_fits`` that fit
  the same budget at full length (printed), and prunes whenever the survivors outgrow it;
- two rewards: the **trained code reward model** (``specdecode.decoder.rewards.load_reward_model``:
  the logit of "the finished response is well-formed", trained by ``python -m
  specdecode.decoder.train_reward``) and the policy's **mean log-likelihood** (the paper's Table 2
  setting). Each row also reports the fraction of returned responses that are actually
  well-formed (``rewards.well_formed``, the property the reward model was trained to predict);
- the **policy**: which model decodes (``policy``). The 22.4M-parameter target costs ~4 ms per
  row and step on one core of this machine, so N = 1024 x 256 tokens would take ~17 min per
  prompt for Best-of-N alone; the sweep over N therefore decodes with the shipped 0.24M draft
  (trained on the same corpus) by default, and a second, smaller sweep decodes with the target,
  with and without **speculative decoding inside** (the draft proposing K tokens for every live
  row, when ``speculative_rejection`` takes ``draft=``).

Every run of one sweep draws candidate ``j`` of prompt ``g`` from the same per-candidate random
numbers, so Speculative Rejection's finished candidates are exactly Best-of-N's: the reward gap
is the price of pruning alone. Compute per run: generated tokens (all candidates, pruned ones
included), model FLOPs (policy + reward model: ``2 x params`` per token through the model plus
attention), measured wall time on this CPU, and the time the same steps would take on an H100
if each were a step of an 8B Llama-shaped model (a **model** from bytes and FLOPs, not a
measurement; see ``StepModel``). Speedups at equal reward read Best-of-N's reward-vs-compute
curve (plain, no speculation) interpolated log-linearly, as the paper reads its speedups.

Then: the target's decode-step time vs the number of rows on this machine, the same curve
modelled for an H100 (the shipped target and an 8B Llama shape), and the paper's Figure 2 --
how well the partial reward at a decision token predicts the final one, per tau, for both
rewards. The last line printed is ``speedup at equal reward: tokens <x>x, time <y>x (<setting>)``.

Rows: ``run(...)`` returns them and saves ``bench/out/best_of_n.json``.
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
import time
from dataclasses import dataclass

import torch

import specdecode as sd
from bench import plots
from bench.prompts import PROMPTS, weights_available
from bench.report import OUT_DIR, Log, Section, figure_path, of_kind, save_rows
from bench.timing import median_seconds, torch_threads
from specdecode.decoder.best_of_n import kv_bytes_per_token
from specdecode.decoder.generate import decode_one_token
from specdecode.decoder.rewards import load_reward_model, well_formed

TOPIC = "best_of_n"
REWARDS = {"trained": "trained reward model (logit of well-formed)", "loglik": "mean log-likelihood"}


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Sweep:
    """One comparison: ``policy`` ("draft" or "target") decodes, ``reward`` ("trained", "loglik" or
    "rm", the random stand-in) ranks; Best-of-N at every N of ``ns``, Speculative Rejection at every
    N of ``spr_ns`` x alpha of ``alphas``; with ``speculative``, every method also runs with the
    draft proposing ``num_draft_tokens`` per live row inside (policy "target" only)."""

    policy: str
    reward: str
    ns: tuple[int, ...]
    spr_ns: tuple[int, ...]
    alphas: tuple[float, ...] = (0.5, 0.7, 0.9)
    speculative: bool = False
    num_draft_tokens: int = 4


@dataclass(frozen=True)
class PartialVsFinal:
    """Figure 2 of Fast Best-of-N Decoding via Speculative Rejection (arXiv 2410.20290):
    ``num_prompts`` x ``n`` responses of up to ``length`` tokens sampled from ``policy``, each scored
    by ``reward`` over its first ``tau`` tokens for every ``tau`` in ``taus`` (partial) and over the
    whole response (final); ``shown_tau`` is the one plotted."""

    num_prompts: int
    n: int
    length: int
    taus: tuple[int, ...]
    shown_tau: int
    reward: str = "loglik"
    policy: str = "target"
    temperature: float = 1.0
    seed: int = 0


def settings(quick: bool) -> dict:
    """``run``'s arguments for the full run (the README's numbers) or ``--quick``."""
    if quick:
        return {
            "sweeps": [
                Sweep("draft", "trained", (16, 64, 256), (256,), (0.5, 0.9)),
                Sweep("target", "trained", (4, 8), (8,), (0.5,), speculative=True),
            ],
            "prompts": PROMPTS[:2],
            "max_new_tokens": 96,
            "correlations": [
                PartialVsFinal(2, 32, 96, (16, 32, 64), shown_tau=32, reward=reward, policy="draft")
                for reward in ("trained", "loglik")
            ],
            "step_rows": (1, 16, 64),
        }
    return {
        "sweeps": [
            Sweep("draft", "trained", (16, 32, 64, 128, 256, 512, 1024), (256, 1024)),
            Sweep("draft", "loglik", (16, 32, 64, 128, 256, 512, 1024), (256, 1024)),
            Sweep("target", "trained", (4, 8, 16), (16,), (0.5, 0.9), speculative=True),
        ],
        "prompts": PROMPTS[:2],
        "max_new_tokens": 256,
        "correlations": [
            PartialVsFinal(4, 64, 256, (16, 32, 64, 128), shown_tau=32, reward=reward, policy="draft")
            for reward in ("trained", "loglik")
        ],
        "step_rows": (1, 4, 16, 64, 256, 1024),
    }


# ----------------------------------------------------------------------------- cost models


@dataclass(frozen=True)
class StepModel:
    """A roofline MODEL of one decode step on a GPU, not a measurement: the step streams the
    weights (bf16) and the rows' KV once, and does ``2 x params`` FLOPs per token plus attention
    (``4 x layers x dim x context`` per token); its time is ``max(bytes / bandwidth, FLOPs /
    peak)``. Kernel launches and other per-step overheads are left out, so it is a lower bound.
    Defaults: an H100 SXM, 3.35 TB/s and 989 TFLOP/s dense bf16 (its data sheet)."""

    name: str
    params: float
    n_layers: int
    dim: int
    kv_bytes_per_token: int  # bf16 KV, all layers, K and V
    bandwidth: float = 3.35e12
    peak_flops: float = 989e12

    def seconds(self, rows: int, context: float, tokens_per_row: int = 1) -> float:
        weights = 2 * self.params
        kv = rows * context * self.kv_bytes_per_token
        tokens = rows * tokens_per_row
        flops = 2 * self.params * tokens + 4 * self.n_layers * self.dim * tokens * context
        return max((weights + kv) / self.bandwidth, flops / self.peak_flops)


# An 8B Llama shape (32 layers, dim 4096, 8 KV heads of 128): the paper's model size.
LLAMA_8B_H100 = StepModel("8B Llama shape on H100 (model)", 8.03e9, 32, 4096, 2 * 32 * 8 * 128 * 2)


def target_on_h100(model) -> StepModel:
    c = model.config
    return StepModel(
        "shipped target on H100 (model)",
        model.num_parameters(),
        c.n_layers,
        c.dim,
        2 * c.n_layers * c.n_kv_heads * c.head_dim * 2,
    )


def transformer_flops(model, tokens: float, context: float) -> float:
    """Estimated FLOPs of ``tokens`` tokens through ``model`` at mean ``context``: ``2 x params``
    per token (the matmuls) plus attention, ``4 x layers x dim x context`` per token."""
    c = model.config
    params = sum(p.numel() for p in model.parameters())
    return tokens * (2 * params + 4 * c.n_layers * c.dim * context)


class CountingReward:
    """A reward model that counts the tokens it is run on (rows x padded width), for FLOPs."""

    def __init__(self, model):
        self.model, self.tokens, self.token_positions = model, 0, 0.0

    def __call__(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        self.tokens += tokens.numel()
        self.token_positions += tokens.numel() * tokens.shape[1] / 2  # mean context of a causal pass
        return self.model(tokens, lengths)

    def flops(self) -> float:
        return transformer_flops(self.model, self.tokens, self.token_positions / max(1, self.tokens))


def memory_budget_for(model, prompts, n: int, tokens_per_row: int) -> int:
    """KV bytes of ``n`` candidates per prompt holding the prompt plus ``tokens_per_row`` tokens."""
    prompt_tokens = sum(len(p.encode()) + 1 for p in prompts)  # + BOS
    return kv_bytes_per_token(model) * n * (prompt_tokens + len(prompts) * tokens_per_row)


def speculation_available() -> bool:
    """Whether ``speculative_rejection`` takes ``draft=`` (speculative decoding inside)."""
    return "draft" in inspect.signature(sd.speculative_rejection).parameters


def make_reward(kind: str, policy):
    if kind == "loglik":
        return sd.LogLikelihoodReward(policy)
    if kind == "trained":
        return CountingReward(load_reward_model())
    if kind == "rm":
        return CountingReward(sd.RewardModel.from_language_model(policy))
    raise ValueError(f"unknown reward {kind!r}: trained, loglik or rm")


def well_formed_fraction(out, prompts) -> float:
    """Fraction of the returned responses that are ``well_formed`` (with their prompt)."""
    return sum(well_formed(p + t)[0] for p, t in zip(prompts, out.texts())) / len(prompts)


# ----------------------------------------------------------------------------- measurement


def run(
    sweeps=(),
    prompts=PROMPTS[:2],
    max_new_tokens: int = 256,
    seed: int = 0,
    budget_fraction: float = 1 / 8,
    correlations=(),
    step_rows=(),
    threads: int | None = 1,
    weights_dir: str | None = None,
    out_dir: str | None = OUT_DIR,
    log: Log = print,
) -> list[dict]:
    """A ``kind="setup"`` row, the ``kind="run"`` rows of every sweep (``compare``), the
    ``kind="step"`` rows (``step_times``) and the ``kind="partial_vs_final"`` rows of every
    correlation setting; no rows without weights. Saved as ``<out_dir>/best_of_n.json``."""
    if not weights_available(weights_dir):
        log(
            f"  weights not found in {weights_dir or 'the shipped directory'}: train them with "
            "python -m specdecode.decoder.train",
            flush=True,
        )
        return save_rows(TOPIC, [], out_dir)
    with torch_threads(threads):
        target, draft = sd.load_pretrained(weights_dir=weights_dir)
        models = {"target": target, "draft": draft}
        start = time.perf_counter()
        rows = []
        for sweep in sweeps:
            rows += compare(models, sweep, prompts, max_new_tokens, seed, budget_fraction, log)
        rows += step_times(target, step_rows, log)
        for setting in correlations:
            rows += partial_vs_final(models, setting, log)
        setup = {
            "kind": "setup",
            "prompts": len(prompts),
            "max_new_tokens": max_new_tokens,
            "seed": seed,
            "threads": torch.get_num_threads(),
            "budget_fraction": budget_fraction,
            "speculation_available": speculation_available(),
            "seconds": time.perf_counter() - start,
        }
    return save_rows(TOPIC, [setup] + rows, out_dir)


def compare(
    models: dict, sweep: Sweep, prompts, max_new_tokens: int, seed: int, budget_fraction: float, log: Log = print
) -> list[dict]:
    """One ``kind="run"`` row per Best-of-N N and per Speculative Rejection (N, alpha), each also
    with speculative decoding inside when ``sweep.speculative`` and the API has it."""
    policy = models[sweep.policy]
    reward = make_reward(sweep.reward, policy)
    inside = [False] + ([True] if sweep.speculative and sweep.policy == "target" and speculation_available() else [])
    if sweep.speculative and len(inside) == 1:
        log("  (speculative decoding inside: speculative_rejection has no draft= argument yet; skipped)", flush=True)
    configs = [(n, None) for n in sweep.ns] + [(n, a) for n in sweep.spr_ns for a in sweep.alphas]
    rows = []
    for speculative in inside:
        for n, alpha in configs:
            rows.append(
                one_run(
                    models, sweep, reward, prompts, n, alpha, speculative, max_new_tokens, seed, budget_fraction, log
                )
            )
    return rows


def one_run(models, sweep, reward, prompts, n, alpha, speculative, max_new_tokens, seed, budget_fraction, log) -> dict:
    policy = models[sweep.policy]
    method = ("Best-of-N" if alpha is None else f"SpecRej a={alpha}") + (" +spec" if speculative else "")
    log(f"  {sweep.policy:<6} {sweep.reward:<7} N = {n:4d}  {method:<20} ...", end="", flush=True)
    budget_tokens = max(1, int(max_new_tokens * budget_fraction))
    budget = memory_budget_for(policy, prompts, n, budget_tokens)
    if speculative:  # the same positions, plus the draft's KV and the K positions a step writes ahead
        slack = budget_tokens + sweep.num_draft_tokens
        budget = memory_budget_for(policy, prompts, n, slack) + memory_budget_for(models["draft"], prompts, n, slack)
    full_length = memory_budget_for(policy, prompts, 1, max_new_tokens)
    trajectory: list[int] = []  # live rows fed to each forward
    common = dict(
        max_new_tokens=max_new_tokens,
        generator=torch.Generator().manual_seed(seed),
        progress=lambda step, live: trajectory.append(live),
    )
    if speculative:
        common |= {"draft": models["draft"], "num_draft_tokens": sweep.num_draft_tokens}
    flops_before = reward.flops() if isinstance(reward, CountingReward) else 0.0
    if alpha is None:
        out = sd.best_of_n(policy, reward, prompts, n, **common)
    else:
        out = sd.speculative_rejection(policy, reward, prompts, n, alpha, memory_budget=budget, **common)
    s = out.stats
    mean_prompt = sum(len(p.encode()) + 1 for p in prompts) / len(prompts)
    tokens_per_forward = sweep.num_draft_tokens + 1 if speculative else 1
    context = mean_prompt + s["tokens_generated"] / max(1, 2 * n * len(prompts))
    flops = transformer_flops(policy, s["model_tokens"], context)
    if speculative:
        flops += transformer_flops(models["draft"], s.get("draft_model_tokens", s["model_tokens"]), context)
    if isinstance(reward, CountingReward):
        flops += reward.flops() - flops_before
    h100 = None
    if not speculative:  # one forward per step of `rows` rows at context prompt + step
        h100 = sum(
            LLAMA_8B_H100.seconds(rows, mean_prompt + i, tokens_per_forward) for i, rows in enumerate(trajectory)
        )
    row = {
        "kind": "run",
        "policy": sweep.policy,
        "reward_kind": sweep.reward,
        "method": method,
        "N": n,
        "alpha": alpha,
        "speculative": speculative,
        "reward": float(out.rewards.mean()),
        "well_formed": well_formed_fraction(out, prompts),
        "tokens": s["tokens_generated"],
        "seconds": s["seconds"],
        "reward_seconds": s.get("reward_seconds", 0.0),
        "forwards": s["forwards"],
        "model_tokens": s["model_tokens"],
        "flops": flops,
        "h100_8b_seconds": h100,
        "rounds": len(s["rounds"]),
        "live_after_rounds": [sum(r["kept_per_prompt"]) for r in s["rounds"]],
        "first_decision_tokens": s["rounds"][0]["tokens_per_row"] if s["rounds"] else None,
        "peak_kv_bytes": s["peak_kv_bytes"],
        "mean_accepted_length": s.get("mean_accepted_length"),
        "memory_budget": budget if alpha is not None else None,
        "bon_fits": budget // full_length if alpha is not None else None,
    }
    log(f" reward {row['reward']:.4f}, {row['tokens']} tokens, {s['seconds']:.1f} s", flush=True)
    return row


@torch.no_grad()
def step_times(target, step_rows, log: Log = print, context: int = 128) -> list[dict]:
    """``kind="step"`` rows: the target's one-token decode step on ``rows`` rows at ``context``
    cached positions, measured here (median of 3), and modelled on an H100 (``StepModel``)."""
    rows = []
    on_h100 = target_on_h100(target)
    for num_rows in step_rows:
        log(f"  target decode step, {num_rows} rows ...", end="", flush=True)
        cache = target.new_cache(num_rows, context + 1)
        cache.lengths.fill_(context)
        tokens = torch.zeros(num_rows, dtype=torch.int64)
        seconds = median_seconds(lambda: decode_one_token(target, cache, tokens), min_reps=3)
        log(f" {seconds * 1e3:.1f} ms", flush=True)
        rows.append(
            {
                "kind": "step",
                "rows": num_rows,
                "context": context,
                "cpu_ms": seconds * 1e3,
                "h100_target_ms": on_h100.seconds(num_rows, context) * 1e3,
                "h100_8b_ms": LLAMA_8B_H100.seconds(num_rows, context) * 1e3,
            }
        )
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


def top_kept_recall(per_prompt_partial: list[list[float]], finals: list[list[float]], keep: float = 0.1) -> float:
    """Of each prompt's best final reward, how often its candidate ranks in the top ``keep``
    fraction by partial reward (what alpha = 1 - keep would keep); mean over prompts."""
    hits = []
    for xs, ys in zip(per_prompt_partial, finals):
        if not xs:
            continue
        top = sorted(range(len(xs)), key=lambda i: -xs[i])[: max(1, math.ceil(keep * len(xs)))]
        hits.append(float(max(range(len(ys)), key=lambda i: ys[i]) in top))
    return sum(hits) / len(hits) if hits else math.nan


@torch.no_grad()
def partial_vs_final(models: dict, setting: PartialVsFinal, log: Log = print) -> list[dict]:
    """One ``kind="partial_vs_final"`` row per decision token ``tau``: the pooled ``partial`` and
    ``final`` rewards of the responses live at ``tau``, their prompt (``group``), ``within_corr``
    (mean within-prompt Pearson r), ``corr`` (pooled), ``top10_recall`` (``top_kept_recall``),
    ``shown`` for the plotted ``tau``.

    Runs ``speculative_rejection`` with ``alpha = 0`` and decision points at ``taus``: nothing is
    pruned, ``stats["rounds"][i]["rewards"]`` holds the partial rewards of the rows still live at
    ``taus[i]`` (candidate order) and ``candidate_rewards`` the final ones. Candidates that
    finished (EOS) before a ``tau`` have no partial reward there and are left out of it."""
    log(
        f"  partial vs final {setting.reward} reward: {setting.num_prompts} prompts x {setting.n} responses of up to "
        f"{setting.length} tokens from the {setting.policy}, tau = {setting.taus} ...",
        flush=True,
    )
    policy = models[setting.policy]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(setting.num_prompts)]
    out = sd.speculative_rejection(
        policy,
        make_reward(setting.reward, policy),
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
                "reward_kind": setting.reward,
                "policy": setting.policy,
                "tau": tau,
                "prompts": setting.num_prompts,
                "n": setting.n,
                "length": setting.length,
                "partial": sum(xs_per_prompt, []),
                "final": sum(ys_per_prompt, []),
                "group": [g for g, xs in enumerate(xs_per_prompt) for _ in xs],
                "within_corr": within,
                "corr": pooled,
                "top10_recall": top_kept_recall(xs_per_prompt, ys_per_prompt),
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


def groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The ``kind="run"`` rows per sweep: ``{(policy, reward_kind): rows}``, in order."""
    out: dict[tuple[str, str], list[dict]] = {}
    for r in of_kind(rows, "run"):
        out.setdefault((r.get("policy", "target"), r.get("reward_kind", "loglik")), []).append(r)
    return out


def curves(rows: list[dict], axis: str) -> dict[str, list[tuple[float, float]]]:
    """Reward vs ``axis`` (``"tokens"``, ``"seconds"``, ...) per method: ``{method: [(x, reward)]}``
    (rows of one sweep; rows without that measure are left out)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in of_kind(rows, "run"):
        if r.get(axis) is not None:
            out.setdefault(r["method"], []).append((float(r[axis]), r["reward"]))
    return out


def speedup(row: dict, bon_rows: list[dict], axis: str) -> tuple[str, float] | None:
    """``(relation, Best-of-N's axis for row's reward / row's axis)``; None without a curve."""
    curve = [(float(r[axis]), r["reward"]) for r in bon_rows if r.get(axis) is not None]
    if not curve or row.get(axis) is None:
        return None
    relation, needed = best_of_n_cost(curve, row["reward"])
    return relation, needed / float(row[axis])


def speedup_at_equal_reward(rows: list[dict], axis: str) -> list[list[str]]:
    """For every row but plain Best-of-N's (one sweep): its compute, its reward, the compute
    plain Best-of-N needs for that reward (``best_of_n_cost``; ">" and "<=" mark bounds) and the ratio."""
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
    "well-formed",
    "tokens",
    "GFLOP",
    "time s",
    "H100 8B s (model)",
    "rounds (live after)",
    "peak KV MiB",
    "BoN tokens for this reward (ratio)",
]


def table_rows(rows: list[dict]) -> list[list]:
    """The main table of one sweep's ``kind="run"`` rows."""
    runs = of_kind(rows, "run")
    bon_rows = [r for r in runs if r["alpha"] is None and not r.get("speculative")]
    table = []
    for r in runs:
        live = " -> ".join(str(x) for x in r["live_after_rounds"])
        h100 = r.get("h100_8b_seconds")
        table.append(
            [
                r["method"],
                r["N"],
                f"{r['reward']:.4f}",
                "-" if r.get("well_formed") is None else f"{r['well_formed']:.0%}",
                r["tokens"],
                "-" if r.get("flops") is None else f"{r['flops'] / 1e9:.1f}",
                f"{r['seconds']:.2f}",
                "-" if h100 is None else f"{h100:.3f}",
                f"{r['rounds']}{f' ({live})' if live else ''}",
                f"{r['peak_kv_bytes'] / 2**20:.1f}",
                bon_equivalent(r, bon_rows),
            ]
        )
    return table


AXES = {
    "tokens": "tokens generated (all candidates)",
    "flops": "model FLOPs (policy + reward model)",
    "seconds": "wall time here (s)",
    "h100_8b_seconds": "H100 time of an 8B model's steps (model, s)",
}


def headline(rows: list[dict], min_n: int = 256) -> tuple[float, float, str] | None:
    """The line the benchmark ends with: among Speculative Rejection rows with the trained reward
    at N >= ``min_n`` (any N if there is none), the one with the largest token saving at equal
    reward (a point on plain Best-of-N's curve, not a bound), with its wall-time saving; None if
    there is none."""
    candidates = []
    for (policy, reward_kind), sweep in groups(rows).items():
        if reward_kind != "trained":
            continue
        bon_rows = [r for r in sweep if r["alpha"] is None and not r.get("speculative")]
        for r in sweep:
            tokens, seconds = speedup(r, bon_rows, "tokens"), speedup(r, bon_rows, "seconds")
            if r["alpha"] is not None and tokens is not None and tokens[0] == "=":
                candidates.append((r["N"] >= min_n, tokens[1], seconds[1] if seconds else math.nan, policy, r))
    if not candidates:
        return None
    _, tokens, seconds, policy, r = max(candidates, key=lambda c: (c[0], c[1]))
    setting = (
        f"trained reward, {policy} policy, N = {r['N']}, {r['method']}, up to "
        f"{_setup(rows).get('max_new_tokens')} new tokens, wall time on this CPU"
    )
    return tokens, seconds, setting


def speculative_line(rows: list[dict]) -> str | None:
    """The best wall-time saving at equal reward of a run with speculative decoding inside, against
    plain Best-of-N of the same sweep (a point on its curve, or a bound, said as such)."""
    best = None
    for (policy, reward_kind), sweep in groups(rows).items():
        bon_rows = [r for r in sweep if r["alpha"] is None and not r.get("speculative")]
        for r in sweep:
            result = speedup(r, bon_rows, "seconds") if r.get("speculative") else None
            if result is not None and (best is None or (result[0] == "=", result[1]) > (best[0][0] == "=", best[0][1])):
                best = (result, policy, reward_kind, r)
    if best is None:
        return None
    (relation, ratio), policy, reward_kind, r = best
    bound = {"=": "", "<": "at most ", ">": "more than "}[relation]
    return (
        f"With speculative decoding inside ({policy} policy, {reward_kind} reward): {r['method']} at N = {r['N']} "
        f"takes {bound}{ratio:.2f}x less wall time than plain Best-of-N at equal reward (this CPU)."
    )


def _setup(rows: list[dict]) -> dict:
    setup = of_kind(rows, "setup")
    return setup[0] if setup else {}


def headline_line(rows: list[dict]) -> str:
    best = headline(rows)
    if best is None:
        return "speedup at equal reward: tokens n/a, time n/a (no Speculative Rejection run with the trained reward)"
    tokens, seconds, setting = best
    return f"speedup at equal reward: tokens {tokens:.2f}x, time {seconds:.2f}x ({setting})"


def section(rows: list[dict], figures_dir: str | None = None) -> Section:
    s = Section(
        "Speculative Rejection vs Best-of-N",
        "Reward reached vs compute (tokens generated, model FLOPs, wall time, and H100 time of an 8B model's "
        "steps as a model) for Best-of-N and Speculative Rejection (Fast Best-of-N Decoding via Speculative "
        "Rejection, arXiv 2410.20290), with the trained code reward model and the log-likelihood reward; the "
        "target's decode-step time vs rows; and the paper's Figure 2, partial vs final reward per decision "
        "token (from `bench/bench_best_of_n.py`).",
    )
    if not rows:
        s.text("Shipped weights not found: section skipped (train them with `python -m specdecode.decoder.train`).")
        return s
    setup = _setup(rows)
    if setup:
        s.text(
            f"{setup['prompts']} prompts in one batch, up to {setup['max_new_tokens']} new tokens, T = 1, seed "
            f"{setup['seed']}, {setup['threads']} thread(s); Speculative Rejection decides by memory: a budget of the "
            f"KV of its N candidates at prompt + {setup['budget_fraction']:.3g} of the new tokens; "
            f"{setup['seconds']:.0f} s in all. Speculative decoding inside: "
            f"{'run' if setup['speculation_available'] else 'not available (no draft= argument)'}."
        )
    for (policy, reward_kind), sweep in groups(rows).items():
        _sweep_section(s, policy, reward_kind, sweep, figures_dir)
    steps = of_kind(rows, "step")
    if steps:
        _step_section(s, steps)
    correlated = of_kind(rows, "partial_vs_final")
    if correlated:
        _partial_vs_final_section(s, correlated, figures_dir)
    line = speculative_line(rows)
    if line:
        s.text(line)
    s.text(headline_line(rows))
    return s


def _sweep_section(s: Section, policy: str, reward_kind: str, sweep: list[dict], figures_dir: str | None) -> None:
    spr = [r for r in sweep if r.get("bon_fits")]
    decisions = "; ".join(
        f"SpecRej at N = {r['N']}: first decision at {r['first_decision_tokens']} tokens, and in its budget "
        f"Best-of-N could keep only {r['bon_fits']} candidates per prompt at full length"
        for r in {r["N"]: r for r in spr}.values()
    )
    s.text(f"**{policy} policy, reward = {REWARDS.get(reward_kind, reward_kind)}.** {decisions}")
    s.table(TABLE_HEADER, table_rows(sweep))
    for axis, xlabel in AXES.items():
        table = speedup_at_equal_reward(sweep, axis)
        if table:
            s.table(
                ["run", axis, "reward", f"Best-of-N {axis} for that reward", "speedup at equal reward"],
                table,
                f"**Speedup at equal reward ({xlabel}; plain Best-of-N interpolated log-linearly)**",
            )
    for axis in ("tokens", "seconds"):
        path = figure_path(figures_dir, f"spr_{policy}_{reward_kind}_reward_vs_{axis}.png")
        s.image(plots.plot_reward_vs_compute(curves(sweep, axis), path, AXES[axis]))


def _step_section(s: Section, steps: list[dict]) -> None:
    one = steps[0]
    s.text(
        f"Where the paper's GPU-time gain comes from: one decode step of the target at {one['context']} cached "
        "positions vs the number of rows, measured here, and MODELLED (roofline: max(bytes / 3.35 TB/s, "
        "FLOPs / 989 TFLOP/s), no launch overheads) for an H100, for the shipped target and an 8B Llama shape. "
        "Per-row cost falling with rows means pruning rows saves less time than tokens."
    )
    s.table(
        [
            "rows",
            "CPU ms (measured)",
            "CPU ms per row",
            "H100 target ms (model)",
            "H100 8B ms (model)",
            "H100 8B ms per row (model)",
        ],
        [
            [
                r["rows"],
                f"{r['cpu_ms']:.1f}",
                f"{r['cpu_ms'] / r['rows']:.2f}",
                f"{r['h100_target_ms']:.4f}",
                f"{r['h100_8b_ms']:.2f}",
                f"{r['h100_8b_ms'] / r['rows']:.3f}",
            ]
            for r in steps
        ],
    )


def _partial_vs_final_section(s: Section, rows: list[dict], figures_dir: str | None) -> None:
    s.text(
        "Partial vs final reward (Figure 2 of the Speculative Rejection paper): responses sampled at T = 1, "
        "each scored on its first tau tokens and when finished. The within-prompt r is what pruning relies on "
        "(it ranks the candidates of one prompt); 'best kept at alpha 0.9' is how often a prompt's best final "
        "response ranks in the top 10% by partial reward."
    )
    s.table(
        ["reward", "policy", "tau", "responses live", "r within a prompt (mean)", "pooled r", "best kept at alpha 0.9"],
        [
            [
                r.get("reward_kind", "loglik"),
                r.get("policy", "target"),
                r["tau"],
                len(r["partial"]),
                f"{_number(r['within_corr']):.3f}",
                f"{_number(r['corr']):.3f}",
                f"{_number(r.get('top10_recall')):.2f}",
            ]
            for r in rows
        ],
    )
    for r in rows:
        if r["shown"]:
            path = figure_path(figures_dir, f"spr_partial_vs_final_{r.get('reward_kind', 'loglik')}.png")
            s.image(
                plots.plot_partial_vs_final(
                    r["partial"], r["final"], _number(r["within_corr"]), r["tau"], path, r["group"]
                )
            )


def _number(value: float | None) -> float:
    """A number read back from JSON, where an undefined one (NaN) is stored as null."""
    return math.nan if value is None else value


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the same setting at small sizes (~1-2 min)")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--num-prompts", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--budget-fraction", type=float, default=1 / 8, help="memory budget: KV at prompt + this x new tokens"
    )
    parser.add_argument("--no-correlation", action="store_true", help="skip the partial-vs-final reward experiment")
    parser.add_argument("--no-target", action="store_true", help="skip the sweep that decodes with the target")
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
    if args.max_new_tokens:
        kwargs["max_new_tokens"] = args.max_new_tokens
    if args.num_prompts:
        kwargs["prompts"] = PROMPTS[: args.num_prompts]
    if args.no_correlation:
        kwargs["correlations"] = []
    if args.no_target:
        kwargs["sweeps"] = [sweep for sweep in kwargs["sweeps"] if sweep.policy != "target"]
    rows = run(
        **kwargs,
        seed=args.seed,
        budget_fraction=args.budget_fraction,
        threads=args.threads,
        weights_dir=args.weights_dir,
    )
    print(section(rows).terminal())  # its last line: speedup at equal reward: ...
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
