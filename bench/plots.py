"""Tables (text and markdown) and figures for the benchmark report.

Tables need nothing beyond the standard library. Figures need matplotlib (``pip install -e
.[bench]``); without it, or given ``path=None``, every ``plot_*`` function returns ``None`` and the report keeps
its tables. Each ``plot_*`` takes plain Python data (lists and dicts), writes one PNG and returns its
path.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

# ----------------------------------------------------------------------------- tables


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(header: Sequence, rows: Sequence[Sequence]) -> str:
    """A fixed-width text table."""
    cells = [[_cell(v) for v in header]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_table(header: Sequence, rows: Sequence[Sequence]) -> None:
    print(format_table(header, rows), flush=True)


def markdown_table(header: Sequence, rows: Sequence[Sequence]) -> str:
    def esc(v):
        return _cell(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


def _pyplot(path: str | None = ""):
    """matplotlib's pyplot, or None without matplotlib or without a ``path`` to write to."""
    if path is None:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        return None


def have_matplotlib() -> bool:
    return _pyplot() is not None


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _plain_log_labels(axis) -> None:
    """Log-axis labels as plain numbers on the major ticks only (minor labels overlap)."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(NullFormatter())


def plot_seed_bars(pairs: list[dict], path: str | None, top: int = 30) -> str | None:
    """The figure of the article "Does speculative sampling lose LLM inference accuracy?" (its
    1,000,000-sample experiment): per (p, q) pair, bars of target q (blue), draft p (green) and the
    empirical frequency of the speculative samples (orange) over the ``top`` tokens by max(p, q)."""
    plt = _pyplot(path)
    if plt is None or not pairs:
        return None
    cols = 2
    rows = math.ceil(len(pairs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.6 * rows), squeeze=False)
    for ax, pair in zip(axes.flat, pairs):
        q, p, emp = pair["target"], pair["draft"], pair["empirical"]
        order = sorted(range(len(q)), key=lambda i: -max(q[i], p[i]))[:top]
        xs = list(range(len(order)))
        width = 0.28
        ax.bar([x - width for x in xs], [q[i] for i in order], width, color="tab:blue", label="target q")
        ax.bar(xs, [p[i] for i in order], width, color="tab:green", label="draft p")
        ax.bar(
            [x + width for x in xs],
            [emp[i] for i in order],
            width,
            color="tab:orange",
            label=f"speculative, {pair['num_samples']:,} samples",
        )
        labels = pair.get("labels")
        ax.set_xticks(xs)
        ax.set_xticklabels([labels[i] if labels else str(i) for i in order], rotation=90, fontsize=7)
        ax.set_title(
            f"{pair['name']}\nstd(emp - q) = {pair['std']:.3e} (noise {pair['noise']:.3e}), "
            f"chi2 p = {pair['p_value']:.3f}",
            fontsize=9,
        )
        ax.set_ylabel("probability")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(pairs) :]:
        ax.axis("off")
    return _save(fig, path)


def plot_e2e_throughput(rows: list[dict], path: str | None) -> str | None:
    """Tokens/s vs K, one line per (batch, temperature); plain decoding as dashed lines.
    ``rows``: dicts with batch, temperature, k (0 = plain), tokens_per_s."""
    plt = _pyplot(path)
    if plt is None or not rows:
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    groups = sorted({(r["temperature"], r["batch"]) for r in rows})
    for i, (temp, batch) in enumerate(groups):
        color = f"C{i % 10}"
        spec = sorted(
            (r for r in rows if (r["temperature"], r["batch"]) == (temp, batch) and r["k"] > 0), key=lambda r: r["k"]
        )
        plain = [r for r in rows if (r["temperature"], r["batch"]) == (temp, batch) and r["k"] == 0]
        label = f"batch {batch}, {'greedy' if temp == 0 else f'T={temp}'}"
        ax.plot([r["k"] for r in spec], [r["tokens_per_s"] for r in spec], "o-", color=color, label=label)
        if plain:
            ax.axhline(plain[0]["tokens_per_s"], color=color, ls="--", lw=0.8)
            ax2.plot(
                [r["k"] for r in spec],
                [r["tokens_per_s"] / plain[0]["tokens_per_s"] for r in spec],
                "o-",
                color=color,
                label=label,
            )
    ks = sorted({r["k"] for r in rows if r["k"] > 0})
    for a in (ax, ax2):
        a.set_xticks(ks)
    ax.set_xlabel("draft tokens K")
    ax.set_ylabel("tokens/s (dashed: plain decoding)")
    ax.set_yscale("log")
    _plain_log_labels(ax.yaxis)
    ax.legend(fontsize=7)
    ax2.axhline(1.0, color="gray", lw=0.8)
    ax2.set_xlabel("draft tokens K")
    ax2.set_ylabel("speedup over plain decoding")
    ax2.legend(fontsize=7)
    return _save(fig, path)


def plot_acceptance_histogram(hists: dict[str, list[int]], path: str | None) -> str | None:
    """Fraction of row-steps that accepted 0..K drafts, one bar group per label."""
    plt = _pyplot(path)
    if plt is None or not hists:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(hists)
    for i, (label, hist) in enumerate(hists.items()):
        total = max(sum(hist), 1)
        ax.bar(
            [a + (i - (len(hists) - 1) / 2) * width for a in range(len(hist))],
            [c / total for c in hist],
            width,
            label=label,
        )
    ax.set_xlabel("accepted draft tokens per row-step")
    ax.set_ylabel("fraction of row-steps")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_reward_vs_compute(curves: dict[str, list[tuple[float, float]]], path: str | None, xlabel: str) -> str | None:
    """Reward reached vs compute (e.g. tokens generated), one curve per method/alpha."""
    plt = _pyplot(path)
    if plt is None or not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        points = sorted(points)
        style = "s--" if label.lower().startswith("best-of") else "o-"
        ax.plot([x for x, _ in points], [y for _, y in points], style, label=label)
    ax.set_xscale("log")
    _plain_log_labels(ax.xaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("reward of the returned response (mean over prompts)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_partial_vs_final(
    partial: Sequence[float],
    final: Sequence[float],
    corr: float,
    tau: int,
    path: str | None,
    groups: Sequence[int] | None = None,
) -> str | None:
    """Figure 2 of Fast Best-of-N Decoding via Speculative Rejection (arXiv 2410.20290): reward of
    the partial response at the decision token vs the final reward, one colour per prompt
    (``groups``); ``corr`` is printed in the title."""
    plt = _pyplot(path)
    if plt is None or not partial:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 5))
    groups = list(groups) if groups is not None else [0] * len(partial)
    for g in sorted(set(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        ax.scatter([partial[i] for i in idx], [final[i] for i in idx], s=6, alpha=0.6, color=f"C{g % 10}")
    ax.set_xlabel(f"partial reward at decision token tau = {tau}")
    ax.set_ylabel("final reward")
    ax.set_title(
        f"Pearson r = {corr:.3f} within a prompt ({len(partial)} responses, {len(set(groups))} prompts)", fontsize=9
    )
    return _save(fig, path)


def plot_op_ratios(rows: list[dict], path: str | None, title: str) -> str | None:
    """Bar chart of each contender's median time over the floor, per shape (log scale)."""
    plt = _pyplot(path)
    if plt is None or not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    contenders = [k for k in rows[0] if k not in ("shape", "floor", "bytes", "accept_rate")]
    width = 0.8 / len(contenders)
    for i, name in enumerate(contenders):
        xs = [j + (i - (len(contenders) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(xs, [r.get(name, float("nan")) / r["floor"] for r in rows], width, label=name)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([str(r["shape"]) for r in rows], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("median time / bandwidth floor")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)
