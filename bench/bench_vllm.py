"""specdecode inside vLLM (run in the vLLM venv that ``make test-vllm`` builds):

    .venv-vllm/bin/python -m bench.bench_vllm [--quick] [--skip-e2e] [--skip-kernels] [--threads 1]

1. **Verifier call, identical inputs**: the grid of ``bench.bench_rejection_sample_ragged`` (this
   module runs that module's code, so the two print one set of numbers): vLLM V1's module-level
   ``rejection_sample`` (on CPU its C++ kernels ``torch.ops._C.rejection_*``) against the plugin's
   ``specdecode_rejection_sample`` and the raw op, called as vLLM's ``RejectionSampler`` calls
   them, timed interleaved on the same tensors. Modes: greedy, random with draft probabilities,
   n-gram (no draft probabilities), mixed (half greedy, half random).
2. **End to end**: output tokens/s of a vLLM engine (the tiny local Llama pair of
   ``tests/vllm/tiny_models.py``, a draft model with K = 4) with the plugin vs vLLM's own verifier
   (``SPECDECODE_VLLM_PLUGIN=cpu-fix-only``: both with correct temperatures), greedy and sampled.
   One engine per child process; engines alternate plugin on / off (ABAB...) for ``--e2e-pairs``
   pairs, each timing ``--e2e-repeats`` rounds of the greedy and the sampled job after a short
   warm-up job, so load that drifts over the run hits both sides. Per side: the median and the
   range of the tokens/s samples; the ratio of the medians and the median of the per-pair ratios.

Rows are saved as ``bench/out/vllm.json`` (the verifier rows also as
``bench/out/rejection_sample_ragged.json``); a table per part is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import bench_rejection_sample_ragged as ragged
from bench.plots import print_table
from bench.report import OUT_DIR, load_rows, rows_path, save_rows

TOPIC = "vllm"
REPO = Path(__file__).resolve().parent.parent
E2E_PROMPTS = 8
E2E_TOKENS = 64
QUICK_E2E_TOKENS = 16
WARMUP_TOKENS = 8
E2E_PAIRS = 3
E2E_REPEATS = 2
SIDES = (("1", "specdecode"), ("cpu-fix-only", "vLLM"))


# ---------------------------------------------------------------------------------------------
# 1. The verifier call
# ---------------------------------------------------------------------------------------------


def run_kernels(quick: bool, threads: int | None, log=print) -> list[dict]:
    rows = ragged.run(**ragged.settings(quick), threads=threads, out_dir=OUT_DIR, log=log)
    return [{"kind": "verifier", **row} for row in rows]


# ---------------------------------------------------------------------------------------------
# 2. End to end
# ---------------------------------------------------------------------------------------------


def engine_request(models, max_tokens: int, temperature: float, repeats: int) -> dict:
    """One engine's work: a warm-up job (not timed in the results), then ``repeats`` rounds of
    the greedy job and the sampled job."""
    prompts = [[5 + i, 6 + i, 7 + i, 100 + i] for i in range(E2E_PROMPTS)]

    def job(temperature: float, tokens: int) -> dict:
        return {"prompts": prompts, "sampling": {"temperature": temperature, "max_tokens": tokens, "ignore_eos": True}}

    jobs = [job(temperature, WARMUP_TOKENS)]
    for _ in range(repeats):
        jobs += [job(0.0, max_tokens), job(temperature, max_tokens)]
    return {
        "llm": {
            "model": str(models.target_dir),
            "dtype": "float32",
            "enforce_eager": True,
            "max_model_len": 256,
            "max_num_seqs": 4,
            "disable_log_stats": False,
            "speculative_config": {
                "model": str(models.draft_dir),
                "num_speculative_tokens": 4,
                "draft_sample_method": "probabilistic",
            },
        },
        "jobs": jobs,
    }


def run_engine(request: dict, plugin: str, workdir: Path) -> dict:
    request_path, result_path = workdir / f"{plugin}.request.json", workdir / f"{plugin}.result.json"
    request_path.write_text(json.dumps(request))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="nobind", SPECDECODE_VLLM_PLUGIN=plugin)
    script = REPO / "tests" / "vllm" / "engine_run.py"
    output_path = workdir / f"{plugin}.log"
    with open(output_path, "w") as output:
        finished = subprocess.run(
            [sys.executable, str(script), str(request_path), str(result_path)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    if finished.returncode != 0:
        raise RuntimeError(f"the engine failed ({finished.returncode}):\n{output_path.read_text()[-3000:]}")
    return json.loads(result_path.read_text())


def run_e2e(max_tokens: int, pairs: int, repeats: int, log=print) -> list[dict]:
    """Engines alternating plugin on / off, ``pairs`` of each; one row per timed job."""
    sys.path.insert(0, str(REPO / "tests" / "vllm"))
    from tiny_models import build_tiny_models

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        models = build_tiny_models(workdir / "models")
        request = engine_request(models, max_tokens, temperature=0.8, repeats=repeats)
        for pair in range(pairs):
            for plugin, verifier in SIDES:
                result = run_engine(request, plugin, workdir)
                for index, job in enumerate(result["jobs"][1:]):  # [0] is the warm-up job
                    sampling = "greedy" if index % 2 == 0 else "T=0.8"
                    tokens = sum(len(c) for prompt in job["token_ids"] for c in prompt)
                    spec = job["spec"]
                    row = {"kind": "e2e", "verifier": verifier, "sampling": sampling, "pair": pair}
                    row.update(round=index // 2, tokens=tokens, seconds=job["seconds"])
                    row.update(tokens_per_s=tokens / job["seconds"])
                    row.update(acceptance=spec["num_accepted_tokens"] / max(spec["num_draft_tokens"], 1))
                    log(
                        f"  pair {pair} {verifier} {sampling}: {row['tokens_per_s']:.1f} tokens/s, "
                        f"acceptance {row['acceptance']:.3f}",
                        flush=True,
                    )
                    rows.append(row)
    return rows + e2e_summary(rows)


def e2e_summary(rows: list[dict]) -> list[dict]:
    """Per sampling mode: each side's median and range of tokens/s, the ratio of the medians
    (plugin / vLLM: above 1 the plugin is faster) and the median of per-pair ratios (each pair's
    plugin samples against the same pair's vLLM samples, which ran back to back)."""
    summary = []
    for sampling in ("greedy", "T=0.8"):
        side = {
            verifier: [
                r for r in rows if r["kind"] == "e2e" and r["sampling"] == sampling and r["verifier"] == verifier
            ]
            for _, verifier in SIDES
        }
        if not all(side.values()):
            continue
        rates = {verifier: [r["tokens_per_s"] for r in samples] for verifier, samples in side.items()}
        medians = {verifier: statistics.median(values) for verifier, values in rates.items()}
        pair_ratios = []
        for pair in sorted({r["pair"] for r in side["specdecode"]}):
            ours = [r["tokens_per_s"] for r in side["specdecode"] if r["pair"] == pair]
            theirs = [r["tokens_per_s"] for r in side["vLLM"] if r["pair"] == pair]
            if ours and theirs:
                pair_ratios.append(statistics.median(ours) / statistics.median(theirs))
        row = {"kind": "e2e_summary", "sampling": sampling, "samples_per_side": len(rates["vLLM"])}
        for verifier, values in rates.items():
            key = "specdecode" if verifier == "specdecode" else "vllm"
            row.update({f"{key}_median": medians[verifier], f"{key}_min": min(values), f"{key}_max": max(values)})
        row.update(ratio_of_medians=medians["specdecode"] / medians["vLLM"])
        row.update(median_pair_ratio=statistics.median(pair_ratios), pair_ratios=pair_ratios)
        row.update(acceptance={v: statistics.mean(r["acceptance"] for r in samples) for v, samples in side.items()})
        summary.append(row)
    return summary


def print_rows(rows: list[dict]) -> None:
    verifier = [{k: v for k, v in r.items() if k != "kind"} for r in rows if r["kind"] == "verifier"]
    if verifier:
        print(ragged.section(verifier).terminal(), flush=True)
    e2e = [r for r in rows if r["kind"] == "e2e"]
    if e2e:
        header = ["pair", "round", "verifier", "sampling", "tokens", "seconds", "tokens/s", "acceptance"]
        print_table(
            header,
            [
                [r["pair"], r["round"], r["verifier"], r["sampling"], r["tokens"], r["seconds"], r["tokens_per_s"]]
                + [r["acceptance"]]
                for r in e2e
            ],
        )
    summary = [r for r in rows if r["kind"] == "e2e_summary"]
    if summary:
        header = ["sampling", "samples/side", "plugin tokens/s median [min, max]", "vLLM tokens/s median [min, max]"]
        header += ["plugin / vLLM (medians)", "median per-pair ratio"]
        print_table(
            header,
            [
                [
                    r["sampling"],
                    r["samples_per_side"],
                    f"{r['specdecode_median']:.1f} [{r['specdecode_min']:.1f}, {r['specdecode_max']:.1f}]",
                    f"{r['vllm_median']:.1f} [{r['vllm_min']:.1f}, {r['vllm_max']:.1f}]",
                    f"{r['ratio_of_medians']:.3f}",
                    f"{r['median_pair_ratio']:.3f}",
                ]
                for r in summary
            ],
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small verifier shapes; 1 pair of short engine runs")
    parser.add_argument("--skip-e2e", action="store_true", help="only the verifier call")
    parser.add_argument("--skip-kernels", action="store_true", help="only the end-to-end run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the verifier call")
    parser.add_argument("--e2e-pairs", type=int, default=None, help=f"plugin on/off engine pairs (default {E2E_PAIRS})")
    parser.add_argument("--e2e-repeats", type=int, default=E2E_REPEATS, help="timed rounds per engine")
    parser.add_argument("--e2e-tokens", type=int, default=None, help=f"new tokens per prompt (default {E2E_TOKENS})")
    args = parser.parse_args(argv)
    rows = []
    if not args.skip_kernels:
        rows += run_kernels(args.quick, args.threads)
    if not args.skip_e2e:
        pairs = args.e2e_pairs or (1 if args.quick else E2E_PAIRS)
        tokens = args.e2e_tokens or (QUICK_E2E_TOKENS if args.quick else E2E_TOKENS)
        rows += run_e2e(tokens, pairs, args.e2e_repeats)
    print_rows(save_rows(TOPIC, kept_rows(args) + rows))


def kept_rows(args: argparse.Namespace) -> list[dict]:
    """The saved rows of the part this run skips (the parts are run one at a time when long)."""
    skipped = {"verifier"} if args.skip_kernels else set()
    skipped |= {"e2e", "e2e_summary"} if args.skip_e2e else set()
    if not skipped or not os.path.exists(rows_path(TOPIC)):
        return []
    # Rows of the earlier format (one engine per side, no "pair") are dropped, not mixed in.
    return [row for row in load_rows(TOPIC) if row["kind"] in skipped and (row["kind"] == "verifier" or "pair" in row)]


if __name__ == "__main__":
    main()
