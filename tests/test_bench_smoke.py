"""Smoke tests of the benchmark runner's pure-table paths (``python -m bench``): the GPU readiness
report for one kernel, the bytes model, seed 2's experiment at a tiny size, the chi-square tail,
the e2e output parser and the report writer. Fast (well under 30 s): no timing is asserted."""

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/ is not installed

from bench import gpu_report, plots
from bench import seed_experiment as se
from bench.__main__ import (
    Section,
    _correlations,
    as_markdown,
    parse_e2e_output,
    pearson,
    speedup_at_equal_reward,
    spr_curves,
    write_report,
)
from specdecode.kernels._aot import compile_in_subprocess, load_widths, widest_load_bytes
from specdecode.stats import chi2_sf, chi_square


def test_gpu_report_compiles_one_kernel_in_a_subprocess():
    # The suite runs with TRITON_INTERPRET=1; compile_all must strip it for the compiler.
    assert os.environ.get("TRITON_INTERPRET") == "1"
    rows = compile_in_subprocess(["sm_90"], name_filter="topk_prune[float32]", timeout=300)
    assert len(rows) == 1
    row = rows[0]
    assert row["ok"], row.get("error")
    assert row["target"] == "sm_90" and row["registers"] > 0 and row["spills"] == 0
    assert row["widest_load"] >= 4  # at least the fp32 reward loads
    table = gpu_report.compile_table(rows)
    assert table[0][:2] == ["topk_prune[float32]", "sm_90"]


@pytest.mark.parametrize(
    "asm, backend, expected",
    [
        ("ld.global.v4.b32 {%r1, %r2, %r3, %r4}, [%rd1];\nld.global.b32 %r5, [%rd2];", "cuda", 16),
        ("ld.global.nc.v2.b64 {%rd1, %rd2}, [%rd3];", "cuda", 16),
        ("ld.global.b16 %rs1, [%rd1];\nld.global.b64 %rd2, [%rd3];", "cuda", 8),
        ("global_load_dwordx4 v[0:3], v[4:5], off\nglobal_load_ushort v1, v[2:3], off", "hip", 16),
        ("global_load_ushort v1, v[2:3], off\nbuffer_load_dwordx2 v[0:1], off", "hip", 8),
        ("mov.u32 %r1, 0;", "cuda", 0),
    ],
)
def test_widest_load_bytes(asm, backend, expected):
    assert widest_load_bytes(asm, backend) == expected
    assert load_widths(asm, backend)[:1] == ([expected] if expected else [])


def test_bytes_model_orders_designs_and_counts_exactly():
    # Compaction of kept = [1, 2, 3] (every survivor moves) with 10-byte rows out of 4.
    designs = {d.name: d for d in gpu_report.compaction_designs(10, 4, [1, 2, 3])}
    assert designs["minimum (rows that move, read + write)"].bytes == 60
    assert designs["index_select + copy_ (temp of N' rows)"].bytes == 4 * 30 + 24
    assert gpu_report.compaction_designs(10, 4, [0, 1, 3])[0].bytes == 20  # rows 0, 1 stay put
    # Acceptance distribution sums to one; all-accepted probability is a^K.
    dist = gpu_report.accepted_distribution(4, 0.7)
    assert math.isclose(sum(dist), 1.0) and math.isclose(dist[-1], 0.7**4)
    for B, K, V, e, _ in gpu_report.REJECTION_SIZES:
        minimum, ours, *peers = gpu_report.rejection_designs(B, K, V, e, 0.7)
        assert minimum.bytes <= ours.bytes <= 2 * minimum.bytes
        assert all(peer.bytes > ours.bytes for peer in peers)
    tables = gpu_report.bytes_tables()
    assert set(tables) == {"rejection_sample", "topk_prune", "compact_kv_cache_"}
    assert all(len(row) == len(gpu_report.BYTES_HEADER) for t in tables.values() for row in t)


def test_chi2_tail_matches_known_values():
    assert math.isclose(chi2_sf(3.841458820694124, 1), 0.05, rel_tol=1e-9)
    assert math.isclose(chi2_sf(18.307038053275146, 10), 0.05, rel_tol=1e-9)
    assert math.isclose(chi2_sf(1000.0, 1000), 0.4940, abs_tol=1e-3)
    assert chi2_sf(0.0, 3) == 1.0 and chi2_sf(math.inf, 3) == 0.0
    assert chi2_sf(500.0, 100) < 1e-40


def test_seed_experiment_tiny_pair_follows_target():
    gen = torch.Generator().manual_seed(0)
    q = torch.softmax(torch.randn(50, generator=gen) * 2, -1)
    p = torch.softmax(torch.randn(50, generator=gen) * 2, -1)
    result = se.run_pair("tiny", p, q, num_samples=20_000, seed=3)
    assert 0.0 < result["accept_rate"] < 1.0
    assert result["std"] < 2 * result["noise"]
    assert result["p_value"] > 1e-4  # fails for a biased sampler (see the next test)
    row = se.sampling_table([result])[0]
    assert row[0] == "tiny" and len(row) == len(se.SAMPLING_HEADER)


def test_seed_experiment_statistics_detect_a_biased_sampler():
    q = torch.full((50,), 1 / 50)
    counts = torch.full((50,), 400)
    counts[0] += 200  # 50% too many of token 0 in 20,200 samples
    stat, df = chi_square(counts, q)
    assert df == 49 and chi2_sf(stat, df) < 1e-3


def test_side_by_side_keeps_both_texts():
    out = se.side_by_side("abc\ndef", "abc\ndeg", width=5)
    assert out.splitlines() == ["abc   | abc", "def   | deg"]


def test_parse_e2e_output_and_pearson():
    text = (
        "## greedy, 128 new tokens per row\n| batch | method | tokens/s | speedup | mean accepted length | "
        "acceptance | accepted-length histogram | same text |\n|---|---|---|---|---|---|---|---|\n"
        "| 1 | plain | 100 | 1.00x | 1 | | | |\n"
        "| 1 | speculative K=4 | 250 | 2.50x | 3.1 | 0.52 | [1, 2, 3, 4, 5] | yes |\n"
        "## sampling, T=0.8, 128 new tokens per row\n| 4 | speculative K=2 | 300 | 1.5x | 2 | 0.5 | [3, 2, 1] | n/a |\n"
    )
    rows = parse_e2e_output(text)
    assert [(r["batch"], r["temperature"], r["k"], r["tokens_per_s"]) for r in rows] == [
        (1, 0.0, 0, 100.0),
        (1, 0.0, 4, 250.0),
        (4, 0.8, 2, 300.0),
    ]
    assert rows[1]["hist"] == [1, 2, 3, 4, 5] and rows[1]["same_text"] == "yes"
    assert math.isclose(pearson([1, 2, 3], [2, 4, 6]), 1.0)
    assert math.isclose(pearson([1, 2, 3], [3, 2, 1]), -1.0)
    assert as_markdown("## greedy\n| a |") == "**greedy**\n\n| a |"
    # Within each prompt perfectly correlated, offset between prompts: within 1, pooled lower.
    within, pooled = _correlations([[1, 2, 3], [10, 11, 12]], [[1, 2, 3], [0, 1, 2]])
    assert math.isclose(within, 1.0) and pooled < 0.9


def test_spr_curves_from_printed_tables_and_from_rows():
    text = (
        "| method | N | alpha | tokens generated | seconds | mean reward |\n|---|---|---|---|---|---|\n"
        "| Best-of-N | 4 | - | 1,024 | 0.5 | -1.20 |\n| SpR | 64 | 0.5 | 3,000 | 1.0 s | -1.05 |\n"
    )
    curves = spr_curves(None, text)
    assert curves["tokens"] == {"Best-of-N": [(1024.0, -1.2)], "SpR alpha=0.5": [(3000.0, -1.05)]}
    assert curves["seconds"]["SpR alpha=0.5"] == [(1.0, -1.05)]
    rows = [{"method": "BoN", "tokens": 10, "reward": 1.0}]
    assert spr_curves(rows, "")["tokens"] == {"BoN": [(10.0, 1.0)]}


def test_speedup_at_equal_reward_interpolates_best_of_n():
    curves = {"Best-of-N": [(100.0, 1.0), (400.0, 2.0)], "SpR a=0.5": [(50.0, 1.5), (10.0, 3.0), (10.0, 0.5)]}
    rows = {(r[1], r[2]): r for r in speedup_at_equal_reward(curves)}
    assert rows[("50", "1.5")][3:] == ["200", "4.00x"]  # halfway in log: sqrt(100 * 400)
    assert rows[("10", "3")][4] == "> 40.00x" and rows[("10", "0.5")][4] == "<= 10.00x"
    assert speedup_at_equal_reward({"SpR": [(1.0, 1.0)]}) == []


def test_tables_and_report(tmp_path, monkeypatch):
    header, rows = ["a", "b"], [[1, 0.5], ["x", "y"]]
    md = plots.markdown_table(header, rows)
    assert plots.parse_markdown_tables("text\n" + md + "\nmore") == [(["a", "b"], [["1", "0.5"], ["x", "y"]])]
    assert "b\\|c" in plots.markdown_table(["b|c"], [])  # pipes in cells are escaped
    assert plots.format_table(header, rows).splitlines()[2].split() == ["1", "0.5"]
    monkeypatch.setattr("bench.__main__.OUT_DIR", str(tmp_path))
    section = Section("T", "what it measures")
    section.table(["x"], [[1]])
    path = write_report([section, Section("broken", "raised", failed=True)], True, ["--quick"], 1.0)
    text = open(path).read()
    assert "## T" in text and "| x |" in text and "## broken (FAILED)" in text


def test_seed_bar_chart_when_matplotlib_is_installed(tmp_path):
    if not plots.have_matplotlib():
        assert plots.plot_seed_bars([{}], str(tmp_path / "x.png")) is None
        return
    pair = {
        "name": "n",
        "target": [0.5, 0.5],
        "draft": [0.9, 0.1],
        "empirical": [0.49, 0.51],
        "num_samples": 100,
        "std": 0.01,
        "noise": 0.05,
        "p_value": 0.8,
        "labels": None,
    }
    path = plots.plot_seed_bars([pair], str(tmp_path / "seed.png"))
    assert os.path.getsize(path) > 1000
