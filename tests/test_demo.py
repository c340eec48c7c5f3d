"""The demo (``python -m specdecode demo``): its sections run and say what they proved -- a
chi-square verdict that fails for a broken verifier, medians of repeated timings beside the
README's figure, and one line for every row that loses at equal tokens -- on random tiny models
(no dependence on the shipped weights)."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re

import pytest
import torch

from specdecode import demo
from specdecode.core import RejectionOutput
from specdecode.decoder.model import ModelConfig, Transformer

pytestmark = pytest.mark.usefixtures("one_thread")

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def tiny(seed=0, max_seq_len=256) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(n_layers=2, dim=32, n_heads=4, n_kv_heads=2, max_seq_len=max_seq_len)).eval()
    with torch.no_grad():  # sharper distributions than the 0.02 init, so candidates differ in likelihood
        model.output.weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    from specdecode.decoder.train import save

    directory = tmp_path_factory.mktemp("weights")
    for name, seed in (("target", 0), ("draft", 1)):
        save(tiny(seed=seed, max_seq_len=256), str(directory / f"{name}.pt"), {})
    return str(directory)


# ---------------------------------------------------------------------------------------------
# Section 1: a verdict, right for a correct and for a broken verifier


def _fit(out: str, name: str) -> tuple[float, int, float]:
    match = re.search(rf"{name}\s+chi-square =\s+([\d.]+), df = (\d+), p = ([\d.e+-]+):", out)
    assert match, out
    return float(match[1]), int(match[2]), float(match[3])


def test_verification_verdict_passes_for_the_op(capsys):
    assert demo.verification_demo(20_000) is True
    out = capsys.readouterr().out
    stat, df, p_value = _fit(out, "emitted tokens")
    assert df == 7 and p_value >= demo.P_VALUE_THRESHOLD
    assert math.isclose(p_value, demo.chi2_sf(stat, df), rel_tol=0.01, abs_tol=1e-3)
    assert _fit(out, r"drafted \(control\)")[2] < demo.P_VALUE_THRESHOLD  # the test can reject
    assert "does NOT follow the target" in out.split("drafted (control)")[1].splitlines()[0]
    assert "rejects below p = 0.001" in out
    assert "Verdict: PASS -- the emitted tokens follow the target" in out and "FAIL" not in out


def test_verification_verdict_fails_for_a_broken_verifier(capsys):
    def accept_everything(draft_ids, draft_probs, target_probs, seed):
        """Emits the draft unverified: the draft's distribution, not the target's."""
        batch = draft_ids.shape[0]
        bonus = torch.zeros(batch, 1, dtype=torch.int64)
        return RejectionOutput(torch.cat([draft_ids, bonus], 1), torch.ones(batch, dtype=torch.int64))

    assert demo.verification_demo(20_000, verifier=accept_everything) is False
    out = capsys.readouterr().out
    assert _fit(out, "emitted tokens")[2] < demo.P_VALUE_THRESHOLD
    assert "Verdict: FAIL -- the emitted tokens do not follow the target distribution." in out
    assert "PASS" not in out


# ---------------------------------------------------------------------------------------------
# Section 2: medians of rounds, and the README's figure for the shape it benchmarks


def test_speed_section_reports_medians_of_rounds(capsys):
    demo.speed_demo(batch=4, num_drafts=2, vocab=300, rounds=3)
    out = capsys.readouterr().out
    match = re.search(
        r"C\+\+ kernel ([\d.]+) ms vs pure-PyTorch reference ([\d.]+) ms: (\d+)x "
        r"\(medians of 3 rounds; per-round ratio (\d+)-(\d+)x\)",
        out,
    )
    assert match, out
    fused, ref, ratio, low, high = float(match[1]), float(match[2]), int(match[3]), int(match[4]), int(match[5])
    assert fused > 0 and ref > 0 and low <= high
    assert abs(ratio - ref / fused) <= 0.5 + ref / fused * 0.2  # printed values are rounded
    assert "same acceptance counts as the reference: True" in out
    assert "README benchmark" not in out  # the README has no figure for this shape


def test_readme_figure_beside_the_timing_is_the_readmes():
    with open(README, encoding="utf-8") as f:
        readme = f.read()
    for (batch, num_drafts, vocab), (fused, ref) in demo.README_VERIFIER_MS.items():
        row = re.search(rf"^\| \({batch}, {num_drafts}, {vocab}\) \| ([\d.]+) \| ([\d.]+) \|", readme, re.M)
        assert row, f"the README's verifier table has no row for {(batch, num_drafts, vocab)}"
        assert (float(row[1]), float(row[2])) == (fused, ref)


# ---------------------------------------------------------------------------------------------
# Section 4: a row that loses at equal tokens is said to, with why


def test_losses_at_equal_tokens():
    # The --quick run of the shipped pair: SpecRej alpha = 0.5 (-0.564, 1,312 tokens) loses to
    # Best-of-N, N = 10 (-0.509, 1,280 tokens); nothing else loses at equal or fewer tokens.
    rows = [(-0.679, 512), (-0.509, 1280), (-0.464, 2048), (-0.564, 1312), (-0.647, 944)]
    assert demo.losses_at_equal_tokens(rows) == [(3, 1)]
    # Within the 5% tolerance it is "equal tokens"; beyond it, not a loss.
    assert demo.losses_at_equal_tokens([(-0.5, 1000), (-0.4, 1050)]) == [(0, 1)]
    assert demo.losses_at_equal_tokens([(-0.5, 1000), (-0.4, 1060)]) == []
    # The best of several winners is named; ties in reward are not a loss.
    assert demo.losses_at_equal_tokens([(-0.5, 1000), (-0.4, 980), (-0.3, 1000)]) == [(0, 2), (1, 2)]
    assert demo.losses_at_equal_tokens([(-0.5, 1000), (-0.5, 900)]) == []


@pytest.fixture(scope="module")
def tiny_run(tiny_pair):
    """Sections 3 and 4 (--quick) on the tiny pair, once for the module: (printed text, section
    4's rows, torch threads before and after)."""
    target, draft = demo._shipped_pair(tiny_pair)
    threads = torch.get_num_threads()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        demo.decoding_demo(target, draft, quick=True)
        rows = demo.best_of_n_demo(target, quick=True)
    return printed.getvalue(), rows, (threads, torch.get_num_threads())


def test_pearson():
    assert demo._pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0)
    assert demo._pearson([1.0, 2.0, 3.0], [3.0, 1.0, -1.0]) == pytest.approx(-1.0)
    assert demo._pearson([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(0.8)
    assert math.isnan(demo._pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))  # a constant side
    assert math.isnan(demo._pearson([1.0, 2.0], [1.0, 2.0]))  # too few points


def test_per_prompt_counts():
    assert demo._per_prompt([8, 8, 8, 8]) == "8"
    assert demo._per_prompt([16, 15, 16, 16]) == "16/15/16/16"


def test_demo_sections_on_a_tiny_pair_and_without_weights(tmp_path, tiny_run, capsys):
    assert demo._shipped_pair(str(tmp_path)) is None
    assert "python -m specdecode.decoder.train" in capsys.readouterr().out
    out, rows, (threads_before, threads_after) = tiny_run
    assert threads_after == threads_before  # the sections run on one thread and restore the count
    assert "3. Plain vs speculative decoding" in out and "greedy, batch 1" in out
    assert "4. Best-of-N vs Speculative Rejection" in out and "SpecRej, N = 16, alpha = 0.5" in out
    assert "method (N per prompt)" in out
    first = rows[3]["out"].stats["rounds"][0]
    live, kept = first["live_per_prompt"], first["kept_per_prompt"]
    assert kept == [-(-m // 2) for m in live]  # alpha = 0.5
    assert f"pruned {sum(live)} -> {sum(kept)} rows ({demo._per_prompt(live)} -> 8 per prompt) at token" in out
    # One line per loss at equal tokens, naming both rows; none otherwise.
    losses = demo.losses_at_equal_tokens([(row["reward"], row["tokens"]) for row in rows])
    assert out.count(" loses to ") == len(losses)
    for loser, winner in losses:
        assert f"{rows[loser]['label']} loses to {rows[winner]['label']} at about equal tokens" in out


def test_loss_explanation_of_a_pruned_run(tiny_run):
    """The line a pruned row gets when plain Best-of-N beats it, whether or not it did here: the
    measured partial/final correlation, the prompts whose eventual best was pruned, the counts."""
    _, rows, _ = tiny_run
    spec_rej, best_of_10, best_of_16 = rows[3], rows[1], rows[2]["out"]
    line = demo.loss_explanation(spec_rej, best_of_10, best_of_16)
    tau = spec_rej["out"].stats["rounds"][0]["tokens_per_row"]
    r = demo.partial_final_correlation(spec_rej["out"], best_of_16)
    assert -1 <= r <= 1  # same seed: the pruned run's candidates are Best-of-16's up to the decision point
    lost = demo.best_pruned(spec_rej["out"], best_of_16)
    # best_pruned counts exactly the prompts whose Best-of-16 winner did not finish in the pruned run.
    winners = best_of_16.best_candidate.tolist()
    assert lost == sum(not bool(spec_rej["out"].finished[g, c]) for g, c in enumerate(winners))
    assert line.startswith("   SpecRej, N = 16, alpha = 0.5 loses to Best-of-N, N = 10 at about equal tokens (")
    assert f"the partial reward at token {tau} predicts the final one only in part" in line
    assert f"(within-prompt correlation {r:.2f})" in line
    assert f"pruning dropped the best of all 16 for {lost} of 4 prompts" in line
    assert line.endswith("8 candidates per prompt finished to Best-of-N's 10.") and "\n" not in line


def test_command_line_runs_the_demo_with_quick(monkeypatch):
    from specdecode.__main__ import main

    calls = []
    monkeypatch.setattr(demo, "main", lambda quick=False: calls.append(quick))
    main(["demo", "--quick"])
    main(["demo"])
    assert calls == [True, False]
    with pytest.raises(SystemExit):
        main(["nonsense"])


@pytest.mark.slow  # ~30 s: builds tiny HF models and runs every integration entry point
def test_hugging_face_section_runs_end_to_end(capsys):
    pytest.importorskip("transformers", reason="the hf extra is not installed")
    demo.hugging_face_demo(quick=True)
    printed = capsys.readouterr().out
    assert "greedy speculative == generate: True" in printed
    assert "Speculative Rejection (alpha 0.75)" in printed and "assisted:" in printed
