"""Goodness-of-fit helpers for checking that a sampler follows a target distribution.

Used by the statistical tests and by the seed experiment in ``bench/``; no scipy needed.
``chi_square`` merges the bins whose expected count is below 5 (the usual validity rule);
``chi2_sf`` is the exact chi-square tail probability (the p-value).
"""

from __future__ import annotations

import math

import torch


def chi2_sf(stat: float, df: int) -> float:
    """P(chi2_df > stat): the regularised upper incomplete gamma Q(df/2, stat/2), by its series
    (x < a + 1) or Lentz's continued fraction (Numerical Recipes 6.2); no scipy needed."""
    if stat <= 0:
        return 1.0
    if math.isinf(stat):
        return 0.0
    a, x = df / 2.0, stat / 2.0
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:  # series for P(a, x)
        term = total = 1.0 / a
        n = a
        for _ in range(100_000):
            n += 1
            term *= x / n
            total += term
            if term < total * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    tiny = 1e-300
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 100_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Chi-square statistic and degrees of freedom of ``counts [V]`` against ``probs [V]``
    (normalised here); bins with expected count < 5 are merged into one."""
    counts = counts.double()
    expected = probs.double() / probs.double().sum() * counts.sum()
    if bool((counts[expected == 0] > 0).any()):
        return math.inf, 1  # a sample where the target has no mass at all
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    return float(((obs - exp) ** 2 / exp).sum()), max(int(keep.sum()) - 1, 1)


def goodness_of_fit_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """P(a correct sampler scores worse than ``counts`` do): the chi-square p-value."""
    return chi2_sf(*chi_square(counts, probs))
