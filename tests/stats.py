"""Goodness-of-fit helpers for the statistical tests (no scipy needed).

A chi-square test of observed counts against expected probabilities, with bins whose expected
count is below 5 merged into one (the usual validity rule), and the rejection threshold at a
stated false-alarm rate from the Wilson–Hilferty approximation of the chi-square quantile
(relative error below 1e-3 for the degrees of freedom used here).
"""
from __future__ import annotations

import math
from statistics import NormalDist

import torch


def chi2_quantile(df: int, false_alarm_rate: float) -> float:
    """x with P(chi2_df > x) = false_alarm_rate (Wilson–Hilferty)."""
    z = NormalDist().inv_cdf(1.0 - false_alarm_rate)
    return df * (1.0 - 2.0 / (9.0 * df) + z * math.sqrt(2.0 / (9.0 * df))) ** 3


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Chi-square statistic and degrees of freedom of ``counts [V]`` against ``probs [V]``."""
    counts = counts.double()
    probs = probs.double() / probs.double().sum()
    expected = probs * counts.sum()
    if bool((counts[expected == 0] > 0).any()):
        return math.inf, 1  # a sample where the target has no mass at all
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    return float(((obs - exp) ** 2 / exp).sum()), max(int(keep.sum()) - 1, 1)


def assert_fits(counts: torch.Tensor, probs: torch.Tensor, false_alarm_rate: float, label: str = "") -> None:
    """Fail when the counts reject the target distribution at the given false-alarm rate."""
    stat, df = chi_square(counts, probs)
    threshold = chi2_quantile(df, false_alarm_rate)
    assert stat <= threshold, (f"{label}: chi2 = {stat:.1f} > {threshold:.1f} (df = {df}, "
                               f"false-alarm rate {false_alarm_rate})")
