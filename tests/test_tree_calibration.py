"""The shipped greedy acceptance table of calibrated token trees (``specdecode.decoder.tree_calibration``):
it is the fit of the counts shipped with it, the fit is what its docstring says, and (slow) re-running
the measurement on the shipped pair reproduces the counts."""

import os

import pytest

from specdecode.decoder import tree_calibration as calibration
from specdecode.decoder import tree_calibration_table as shipped


def test_pool_adjacent_violators_by_hand():
    pooled = calibration.pool_adjacent_violators([0.1, 0.5, 0.3, 0.9], [1, 1, 1, 1])
    assert pooled == pytest.approx([0.1, 0.4, 0.4, 0.9])
    assert calibration.pool_adjacent_violators([0.6, 0.2, 0.1], [1, 2, 1]) == pytest.approx([0.275] * 3)


def test_fit_by_hand():
    counts = {"n": [[0] * 18 + [2, 8], [8] + [0] * 19], "hits": [[0] * 18 + [2, 6], [0] * 20]}
    top1, others = calibration.fit_acceptance(counts)
    # top-1: 0.5 for the empty bins, (2+1)/(2+2) = 0.75 and (6+1)/(8+2) = 0.7 pooled (weights 4, 10)
    assert top1[:18] == [0.5] * 18 and top1[18] == top1[19] == pytest.approx((0.75 * 4 + 0.7 * 10) / 14, abs=1e-6)
    assert others[0] == pytest.approx(0.1) and others[1:] == [0.5] * 19


def test_shipped_table_is_the_fit_of_its_counts():
    assert shipped.SETTINGS == calibration.settings()
    assert shipped.ACCEPTANCE == calibration.fit_acceptance(shipped.COUNTS)
    for row in shipped.ACCEPTANCE:
        assert len(row) == calibration.NUM_BINS and all(0 < v < 1 for v in row)
        assert row == sorted(row)  # non-decreasing in the draft's probability
    n = sum(map(sum, shipped.COUNTS["n"]))
    assert n == calibration.NUM_PROMPTS * calibration.NEW_TOKENS * calibration.TOP_K


@pytest.mark.slow
def test_rerunning_the_measurement_reproduces_the_shipped_counts():
    from specdecode.decoder.generate import WEIGHTS_DIR

    if not os.path.exists(os.path.join(WEIGHTS_DIR, "target.pt")):
        pytest.skip("no shipped weights in this checkout")
    assert calibration.measure_shipped_pair() == shipped.COUNTS
