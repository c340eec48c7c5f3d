"""Smoke tests of the benchmarks (``bench/``): every section's ``run`` at tiny sizes returns rows
with the right keys and values and saves exactly those rows as JSON; every section renders from
rows alone (fresh or read back); ``python -m bench`` runs, saves and re-renders a report from the
saved rows. Plus the pure pieces: the GPU bytes model, the chi-square tail, the Best-of-N
interpolation and the correlations. No timing is asserted; the whole file takes well under 30 s."""

import json
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/ is not installed

from bench import __main__ as runner
from bench import bench_best_of_n as bon
from bench import bench_compact_kv as compact
from bench import bench_e2e as e2e
from bench import bench_rejection_sample as verifier
from bench import bench_topk_prune as prune
from bench import bench_tree_decoding as tree_bench
from bench import gpu_report, plots
from bench import seed_experiment as se
from bench.prompts import PROMPTS, weights_available
from bench.report import Section, load_rows, save_rows, write_report
from specdecode.kernels._aot import load_widths, widest_load_bytes
from specdecode.stats import chi2_sf, chi_square

needs_weights = pytest.mark.skipif(not weights_available(), reason="shipped weights not found")


def saved(module, out_dir) -> list[dict]:
    with open(os.path.join(out_dir, f"{module.TOPIC}.json")) as f:
        return json.load(f)


def tables(section: Section) -> list[tuple[list, list]]:
    """(header, rows) of every table of a section, in order."""
    return [(header, rows) for kind, *content in section.items if kind == "table" for _, header, rows in [content]]


# ----------------------------------------------------------------------------- op microbenchmarks


def test_rejection_sample_rows_json_and_table(tmp_path, monkeypatch):
    def hf_stand_in(*args):  # importing transformers takes seconds; the column's plumbing is what is tested
        return None

    monkeypatch.setattr(verifier, "hf_speculative_sampling", lambda: hf_stand_in)
    rows = verifier.run([(1, 2, 64), (3, 4, 50)], min_reps=1, min_seconds=0.0, out_dir=str(tmp_path), log=print)
    assert saved(verifier, tmp_path) == rows
    assert [r["shape"] for r in rows] == [[1, 2, 64], [3, 4, 50]]
    for r in rows:
        assert 0.0 <= r["accept_rate"] <= 1.0
        assert all(r[k] > 0 for k in ("specdecode", "reference", "multinomial", "floor"))
        batch, num_drafts, vocab = r["shape"]
        gathers, sampled_rows = batch * num_drafts * 2 * 4, batch * vocab * 4
        assert sampled_rows + gathers <= r["bytes"] <= 2 * sampled_rows + gathers  # + residual rows
    assert rows[0]["hf"] > 0 and "hf" not in rows[1]  # HF's sampler takes one row only
    (header, body), *_ = tables(verifier.section(rows))
    assert header == verifier.TABLE_HEADER and body[1][0] == "(3, 4, 50)"
    assert body[1][6] == f"{rows[1]['reference'] / rows[1]['specdecode']:.1f}x"


def test_topk_prune_rows_json_and_table(tmp_path):
    rows = prune.run([1, 3], [8], min_reps=1, min_seconds=0.0, out_dir=str(tmp_path), log=print)
    assert saved(prune, tmp_path) == rows
    assert [(r["P"], r["n"]) for r in rows] == [(1, 8), (3, 8)]
    assert all(r["op_us"] > 0 and r["topk_prune_us"] > 0 and r["topk_loop_us"] > 0 and r["floor_us"] > 0 for r in rows)
    (header, body), *_ = tables(prune.section(rows))
    assert header[-2:] == ["floor us", "op/floor"] and body[1][:2] == [3, 8]
    assert body[1][5] == f"{rows[1]['topk_loop_us'] / rows[1]['op_us']:.1f}x"


def test_compact_kv_rows_count_the_bytes_that_move(tmp_path):
    layouts = [("tiny [B,H,S,D] bf16", (8, 2, 4, 16), 0, torch.bfloat16)]
    rows = compact.run(
        layouts, ["drop row 0", "keep 50%"], min_reps=1, min_seconds=0.0, out_dir=str(tmp_path), log=print
    )
    assert saved(compact, tmp_path) == rows
    row_bytes = 2 * 4 * 16 * 2
    assert rows[0]["kept_set"] == "drop row 0" and rows[0]["moved_bytes"] == 7 * row_bytes  # every survivor moves
    assert 0 < rows[1]["moved_bytes"] <= 4 * row_bytes  # 4 of 8 kept; those already in place do not move
    (header, body), *_ = tables(compact.section(rows))
    assert header == compact.TABLE_HEADER and body[0][:3] == ["tiny [B,H,S,D] bf16", "drop row 0", "0.0"]


# ----------------------------------------------------------------------------- GPU report


def test_gpu_report_compiles_one_kernel_and_models_bytes(tmp_path):
    # The suite runs with TRITON_INTERPRET=1; the compile subprocess must strip it for the compiler.
    assert os.environ.get("TRITON_INTERPRET") == "1"
    rows = gpu_report.run(["sm_90"], "topk_prune[float32]", out_dir=str(tmp_path), log=print)
    assert saved(gpu_report, tmp_path) == rows
    (compiled,) = [r for r in rows if r["kind"] == "compile"]
    assert compiled["ok"], compiled.get("error")
    assert compiled["target"] == "sm_90" and compiled["registers"] > 0 and compiled["spills"] == 0
    assert compiled["widest_load"] >= 4  # at least the fp32 reward loads
    modelled = [r for r in rows if r["kind"] == "bytes"]
    ops = {"rejection_sample", "rejection_sample_ragged", "topk_prune", "compact_kv_cache_"}
    assert {r["op"] for r in modelled} == ops
    assert all(r["bytes"] >= r["min_bytes"] > 0 and r["acceptance"] == 0.7 for r in modelled)
    section = gpu_report.section(rows)
    (compile_header, compile_body), *bytes_tables = tables(section)
    assert compile_header == gpu_report.COMPILE_HEADER and compile_body[0][:2] == ["topk_prune[float32]", "sm_90"]
    assert len(bytes_tables) == 4 and all(header == gpu_report.BYTES_HEADER for header, _ in bytes_tables)
    assert "sm_90" in section.about and "1 of 1 (case, target) compiles succeeded" in section.items[0][1]


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
    # Ragged from logits: at a = 1 every row is checked and accepted (bonus row: 3 passes, MRV2: 1);
    # at a = 0 one row is checked and it is the sampled one.
    minimum, ours, mrv2, mrv1 = gpu_report.ragged_designs(1, 4, 1000, 1.0)
    io = 4 * 8 + 6 * 8 + 8
    assert ours.bytes == io + 4 * 1000 * 4 + 3 * 1000 * 2 and minimum.bytes == io + 4 * 1000 * 4 + 1000 * 2
    minimum, ours, mrv2, mrv1 = gpu_report.ragged_designs(1, 4, 1000, 0.0)
    assert ours.bytes == io + 1000 * 4 + 3 * 1000 * 4 and mrv2.bytes > 4 * 1000 * 4 + 1000 * 4
    for B, K, V, _ in gpu_report.RAGGED_SIZES:
        minimum, ours, mrv2, mrv1 = gpu_report.ragged_designs(B, K, V, 0.7)
        assert minimum.bytes <= min(ours.bytes, mrv2.bytes) and max(ours.bytes, mrv2.bytes) < mrv1.bytes
    rows = gpu_report.bytes_rows()
    minimum_row = next(r for r in rows if r["design"] == "minimum")
    assert gpu_report.bytes_table([minimum_row])[0][3] == "1.00x"
    assert all(len(line) == len(gpu_report.BYTES_HEADER) for line in gpu_report.bytes_table(rows))


# ----------------------------------------------------------------------------- losslessness


def test_chi2_tail_matches_known_values():
    assert math.isclose(chi2_sf(3.841458820694124, 1), 0.05, rel_tol=1e-9)
    assert math.isclose(chi2_sf(18.307038053275146, 10), 0.05, rel_tol=1e-9)
    assert math.isclose(chi2_sf(1000.0, 1000), 0.4940, abs_tol=1e-3)
    assert chi2_sf(0.0, 3) == 1.0 and chi2_sf(math.inf, 3) == 0.0
    assert chi2_sf(500.0, 100) < 1e-40


def test_median_interval_and_sign_test_by_hand():
    """The head-to-head's statistics: for n = 10 the 95% interval of the median is [x_(2), x_(9)]
    (coverage 1 - 2 * 11/1024 = 0.979; [x_(3), x_(8)] would cover only 0.891); the sign test's tail
    for 9 wins of 10 is 11/1024."""
    values = [10.0, 1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0, 5.0]
    assert tree_bench.median_interval(values) == (5.5, 2.0, 9.0)
    assert tree_bench.median_interval([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)  # too few for 95%: the range
    assert tree_bench.sign_test_p(9, 10) == 11 / 1024
    assert tree_bench.sign_test_p(0, 5) == 1.0
    rows = [{"first": "tree", "second": "chain", "ratio": r} for r in (1.2, 0.9, 1.1, 1.3, 1.05)]
    line = tree_bench.head_to_head_line(rows)
    assert "median 1.100, range [0.900, 1.300]" in line and "faster in 4 of 5 rounds" in line
    assert "p = 0.188" in line  # 6/32
    assert "95% interval of the median [0.900, 1.300]" in tree_bench.head_to_head_line(rows + rows[:1])
    assert tree_bench.head_to_head_line([]) is None


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


def test_seed_experiment_rows_json_and_section(tmp_path):
    # An empty weights directory: the three synthetic pairs only, and notes instead of the model
    # pair and the greedy texts (the models are loaded by the e2e and Best-of-N tests).
    rows = se.run(num_samples=3000, greedy_tokens=6, weights_dir=str(tmp_path), out_dir=str(tmp_path), log=print)
    assert saved(se, tmp_path) == rows
    assert [r["kind"] for r in rows] == ["note", "sampling", "sampling", "sampling"]
    sampled = rows[1:]
    assert all(r["num_samples"] == 3000 and r["vocab"] == len(r["empirical"]) for r in sampled)
    assert all(math.isclose(sum(r["empirical"]), 1.0) and 0 < r["accept_rate"] < 1 for r in sampled)
    section = se.section(rows)
    (header, body), *_ = tables(section)
    assert header == se.SAMPLING_HEADER and [line[2] for line in body] == ["3,000"] * 3
    texts = [content[0] for kind, *content in section.items if kind == "text"]
    assert texts[0].startswith(f"NOTE: no (target, draft) weights in {tmp_path}") and texts[-1].startswith(
        "Greedy: shipped weights"
    )


def test_side_by_side_keeps_both_texts():
    out = se.side_by_side("abc\ndef", "abc\ndeg", width=5)
    assert out.splitlines() == ["abc   | abc", "def   | deg"]


# ----------------------------------------------------------------------------- end to end


@needs_weights
def test_e2e_rows_json_and_section(tmp_path):
    rows = e2e.run([1], [2], [0.0], max_new_tokens=6, repeats=1, forward_reps=1, out_dir=str(tmp_path), log=print)
    assert saved(e2e, tmp_path) == rows
    assert [r["kind"] for r in rows] == ["setup"] + ["forward"] * 6 + ["decode"] * 2
    plain, spec = rows[-2:]
    assert (plain["k"], plain["speedup"], spec["k"], spec["rows_compared"]) == (0, 1.0, 2, 1)
    assert math.isclose(spec["speedup"], spec["tokens_per_s"] / plain["tokens_per_s"])
    assert len(spec["hist"]) == 3 and 1.0 <= spec["mean_accepted_length"] <= 3.0 and 0 <= spec["same_text"] <= 1
    section = e2e.section(rows)
    forward, decode = tables(section)
    assert forward[0] == ["forward pass", "median ms"] and len(forward[1]) == 6
    assert decode[0] == e2e.DECODE_HEADER and [line[1] for line in decode[1]] == ["plain", "speculative K=2"]


def test_e2e_section_from_rows_alone():
    common = {"kind": "decode", "max_new_tokens": 128, "batch": 1}
    rows = [
        {**common, "temperature": 0.0, "k": 0, "tokens_per_s": 100.0, "speedup": 1.0, "mean_accepted_length": 1.0},
        {
            **common,
            "temperature": 0.0,
            "k": 4,
            "tokens_per_s": 250.0,
            "speedup": 2.5,
            "mean_accepted_length": 3.1,
            "acceptance": 0.52,
            "hist": [1, 2, 3, 4, 5],
            "same_text": 2,
            "rows_compared": 3,
        },
        {**common, "temperature": 0.8, "k": 0, "tokens_per_s": 90.0, "speedup": 1.0, "mean_accepted_length": 1.0},
    ]
    section = e2e.section(rows)
    (_, greedy), (_, sampled) = tables(section)[1:]
    assert greedy == [
        [1, "plain", "100", "1.00x", "1", "", "", ""],
        [1, "speculative K=4", "250", "2.50x", "3.10", "0.52", "[1, 2, 3, 4, 5]", "2/3"],
    ]
    assert sampled == [[1, "plain", "90", "1.00x", "1", "", "", ""]]
    captions = [content[0] for kind, *content in section.items if kind == "table"]
    assert captions[1:] == ["**greedy, 128 new tokens per row**", "**sampling, T=0.8, 128 new tokens per row**"]
    assert "not found" in e2e.section([]).items[0][1]


# ----------------------------------------------------------------------------- Best-of-N


@needs_weights
def test_best_of_n_rows_json_and_section(tmp_path):
    setting = bon.PartialVsFinal(num_prompts=2, n=4, length=12, taus=(3, 6), shown_tau=6, policy="draft")
    sweep = bon.Sweep("draft", "loglik", ns=(2, 4), spr_ns=(4,), alphas=(0.5,))
    rows = bon.run(
        [sweep], PROMPTS[:2], max_new_tokens=6, correlations=[setting], step_rows=(1, 2), out_dir=str(tmp_path)
    )
    assert saved(bon, tmp_path) == rows
    setup, *runs = [r for r in rows if r["kind"] in ("setup", "run")]
    assert (setup["prompts"], setup["max_new_tokens"]) == (2, 6)
    assert [(r["method"], r["N"]) for r in runs] == [("Best-of-N", 2), ("Best-of-N", 4), ("SpecRej a=0.5", 4)]
    best, pruned = runs[1:]
    assert 0 < pruned["tokens"] <= best["tokens"] <= 2 * best["N"] * 6  # pruning only removes tokens
    assert pruned["rounds"] >= 1 and best["rounds"] == 0 and pruned["bon_fits"] < pruned["N"]
    assert all(0 <= r["well_formed"] <= 1 and r["flops"] > 0 and r["h100_8b_seconds"] > 0 for r in runs)
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["rows"] for r in steps] == [1, 2] and all(r["cpu_ms"] > 0 for r in steps)
    correlated = [r for r in rows if r["kind"] == "partial_vs_final"]
    assert [r["tau"] for r in correlated] == [3, 6] and [r["shown"] for r in correlated] == [False, True]
    assert all(len(r["partial"]) == len(r["final"]) == len(r["group"]) <= 8 for r in correlated)
    section = bon.section(rows)
    main_table, *speedups, step_table, correlation_table = tables(section)
    assert main_table[0] == bon.TABLE_HEADER and len(main_table[1]) == 3 and len(speedups) == 4
    assert [line[0] for line in step_table[1]] == [1, 2]
    assert [line[2] for line in correlation_table[1]] == [3, 6]
    texts = [content[0] for kind, *content in section.items if kind == "text"]
    assert texts[-1].startswith("speedup at equal reward: tokens n/a")  # no trained-reward sweep here


def test_step_model_is_a_roofline():
    model = bon.StepModel("m", params=1e9, n_layers=1, dim=1, kv_bytes_per_token=0, bandwidth=1e12, peak_flops=1e15)
    assert math.isclose(model.seconds(1, 0), 2e9 / 1e12)  # streams the bf16 weights: 2 ms
    assert math.isclose(model.seconds(1000, 0), 2e9 / 1e12)  # 2 TFLOP at 1 PFLOP/s: still 2 ms
    assert math.isclose(model.seconds(4000, 0), 8e12 / 1e15)  # compute-bound from 1000 rows on


def test_best_of_n_headline_picks_the_largest_token_saving_at_large_n():
    def row(method, n, alpha, reward, tokens, seconds):
        return {"kind": "run", "policy": "draft", "reward_kind": "trained", "method": method, "N": n,
                "alpha": alpha, "reward": reward, "tokens": tokens, "seconds": seconds}  # fmt: skip

    rows = [
        {"kind": "setup", "prompts": 1, "max_new_tokens": 256},
        row("Best-of-N", 16, None, 1.0, 100, 10.0),
        row("Best-of-N", 256, None, 2.0, 1600, 160.0),
        row("SpecRej a=0.9", 16, 0.9, 1.9, 20, 2.0),  # N < 256: not a candidate
        row("SpecRej a=0.5", 256, 0.5, 1.5, 200, 40.0),  # BoN needs 400 tokens, 40 s
        row("SpecRej a=0.9", 256, 0.9, 3.0, 50, 5.0),  # above the curve: a bound, not a point
    ]
    assert bon.headline_line(rows) == (
        "speedup at equal reward: tokens 2.00x, time 1.00x "
        "(trained reward, draft policy, N = 256, SpecRej a=0.5, up to 256 new tokens, wall time on this CPU)"
    )


def test_best_of_n_cost_interpolates_in_log_compute():
    curve = [(400.0, 2.0), (100.0, 1.0)]
    relation, needed = bon.best_of_n_cost(curve, 1.5)
    assert relation == "=" and math.isclose(needed, 200.0)  # halfway in log: sqrt(100 * 400)
    assert bon.best_of_n_cost(curve, 3.0) == (">", 400.0) and bon.best_of_n_cost(curve, 0.5) == ("<", 100.0)
    assert bon.best_of_n_cost(curve, 1.0) == ("=", 100.0)
    # A dip in Best-of-N's curve is flattened by the running max: 1.5 lies halfway between the
    # reward 1.0 it already had at x = 200 and 2.0 at x = 400.
    relation, needed = bon.best_of_n_cost([(100.0, 1.0), (200.0, 0.5), (400.0, 2.0)], 1.5)
    assert relation == "=" and math.isclose(needed, math.sqrt(200.0 * 400.0))


def test_best_of_n_tables_from_rows_alone():
    def run_row(method, n, alpha, reward, tokens, seconds):
        return {
            "kind": "run",
            "method": method,
            "N": n,
            "alpha": alpha,
            "reward": reward,
            "ppl": None,
            "tokens": tokens,
            "seconds": seconds,
            "forwards": 10,
            "rounds": 0 if alpha is None else 1,
            "live_after_rounds": [] if alpha is None else [n // 2],
            "peak_kv_bytes": 2**20,
        }

    rows = [
        run_row("Best-of-N", 4, None, 1.0, 100, 1.0),
        run_row("Best-of-N", 16, None, 2.0, 400, 4.0),
        run_row("SpecRej a=0.5", 16, 0.5, 1.5, 50, 0.5),
        run_row("SpecRej a=0.5", 64, 0.5, 3.0, 10, 0.1),
        run_row("SpecRej a=0.9", 4, 0.9, 0.5, 10, 0.1),
    ]
    main = bon.table_rows(rows)
    assert [line[-1] for line in main] == ["", "", "200 (4.00x)", "above BoN-16", "below BoN-4"]
    assert main[2][3] == "-" and main[2][8] == "1 (8)"  # no well-formed fraction in these rows
    speedups = {(line[0], line[1]): line[3:] for line in bon.speedup_at_equal_reward(rows, "tokens")}
    assert speedups[("SpecRej a=0.5", "50")] == ["200", "4.00x"]
    assert speedups[("SpecRej a=0.5", "10")] == ["> 400", "> 40.00x"]
    assert speedups[("SpecRej a=0.9", "10")] == ["<= 100", "<= 10.00x"]
    assert bon.speedup_at_equal_reward([r for r in rows if r["alpha"]], "tokens") == []  # no Best-of-N curve


def test_pearson_and_within_prompt_correlations():
    assert math.isclose(bon.pearson([1, 2, 3], [2, 4, 6]), 1.0)
    assert math.isclose(bon.pearson([1, 2, 3], [3, 2, 1]), -1.0)
    assert math.isnan(bon.pearson([1, 1, 1], [1, 2, 3]))
    # Within each prompt perfectly correlated, offset between prompts: within 1, pooled lower.
    within, pooled = bon.correlations([[1, 2, 3], [10, 11, 12]], [[1, 2, 3], [0, 1, 2]])
    assert math.isclose(within, 1.0) and pooled < 0.9
    # Prompt 0's best final (index 2) is its top partial; prompt 1's (index 0) ranks last.
    assert bon.top_kept_recall([[1, 2, 3], [1, 2, 3]], [[0, 0, 5], [5, 0, 0]], keep=0.1) == 0.5


# ----------------------------------------------------------------------------- rows, report, runner


def test_rows_are_saved_as_standard_json(tmp_path):
    rows = save_rows("t", [{"shape": (1, 2), "x": math.nan, "nested": {"y": math.inf}}], str(tmp_path))
    assert rows == [{"shape": [1, 2], "x": None, "nested": {"y": None}}]
    assert load_rows("t", str(tmp_path)) == rows
    assert "NaN" not in open(tmp_path / "t.json").read()
    assert save_rows("t", [{"a": (1,)}], None) == [{"a": [1]}]  # no directory: converted, not written


def test_section_markdown_terminal_and_report(tmp_path):
    header, rows = ["a", "b|c"], [[1, 0.5], ["x", "y"]]
    assert plots.format_table(header, rows).splitlines()[2].split() == ["1", "0.5"]
    section = Section("T", "what it measures")
    section.text("prose")
    section.table(header, rows, "**caption**")
    section.code("a | b")
    markdown = section.markdown(str(tmp_path))
    assert markdown.startswith("## T\n\nwhat it measures\n\nprose\n\n**caption**\n\n| a | b\\|c |")
    assert "```\na | b\n```" in markdown
    assert section.terminal().splitlines()[8:10] == ["a  b|c", "-  ---"]
    broken = runner.failed_section("broken", "Traceback: boom")
    path = write_report([section, broken], "`python -m bench x`", 1.0, str(tmp_path))
    text = open(path).read()
    assert "Command: `python -m bench x`" in text and "| x | y |" in text
    assert "## broken (FAILED)" in text and "Traceback: boom" in text


def test_choose_sections_and_aliases():
    assert runner.choose([]) == list(runner.SECTIONS)
    assert runner.choose(["spr", "ops", "topk_prune"]) == [
        "best_of_n",
        "rejection_sample",
        "rejection_sample_ragged",
        "tree_rejection_sample",
        "topk_prune",
        "compact_kv",
    ]
    with pytest.raises(ValueError, match="unknown section 'nope'"):
        runner.choose(["nope"])


def test_runner_saves_rows_and_renders_the_same_report_from_them(tmp_path, monkeypatch):
    tiny = {"prompts": [2], "candidates": [8], "min_reps": 1, "min_seconds": 0.0}
    monkeypatch.setattr(prune, "settings", lambda quick: tiny)
    assert runner.main(["--quick", "pruning", "--out", str(tmp_path)]) == 0
    rows = load_rows("topk_prune", str(tmp_path))
    assert [(r["P"], r["n"]) for r in rows] == [(2, 8)]
    ran = open(tmp_path / "report.md").read()
    assert "## Pruning microbenchmark (CPU)" in ran and "(quick mode: small sizes)" in ran
    assert runner.main(["--render", "--out", str(tmp_path)]) == 0  # other sections have no rows: skipped
    rendered = open(tmp_path / "report.md").read()
    table = [line for line in ran.splitlines() if line.startswith("| 2 | 8 |")]
    assert len(table) == 1 and table == [line for line in rendered.splitlines() if line.startswith("| 2 | 8 |")]
    assert "## Verifier" not in rendered


def test_runner_reports_a_failing_section_and_keeps_going(tmp_path, monkeypatch):
    def broken(quick):
        raise RuntimeError("benchmark broke")

    tiny = {"prompts": [1], "candidates": [8], "min_reps": 1, "min_seconds": 0.0}
    monkeypatch.setattr(compact, "settings", broken)
    monkeypatch.setattr(prune, "settings", lambda quick: tiny)
    assert runner.main(["compaction", "pruning", "--out", str(tmp_path)]) == 1
    report = open(tmp_path / "report.md").read()
    assert "## compact_kv (FAILED)" in report and "benchmark broke" in report
    assert "## Pruning microbenchmark (CPU)" in report


def test_seed_bar_chart_when_matplotlib_is_installed(tmp_path):
    assert plots.plot_seed_bars([{}], None) is None  # no path: no figure
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
