"""The statistical tests' assertion, on top of ``specdecode.stats``."""

from __future__ import annotations

import torch

from specdecode.stats import chi2_sf, chi_square


def assert_fits(counts: torch.Tensor, probs: torch.Tensor, false_alarm_rate: float, label: str = "") -> None:
    """Fail when the counts reject the target distribution at the given false-alarm rate: a
    correct sampler fails with probability ``false_alarm_rate``."""
    stat, df = chi_square(counts, probs)
    p_value = chi2_sf(stat, df)
    assert p_value >= false_alarm_rate, (
        f"{label}: chi2 = {stat:.1f} with df = {df}, p = {p_value:.2e} < false-alarm rate {false_alarm_rate}"
    )
