"""specdecode inside vLLM (run in the vLLM venv that ``make test-vllm`` builds):

    .venv-vllm/bin/python -m bench.bench_vllm [--quick] [--skip-e2e]

1. **Verifier call, identical inputs**: vLLM V1's module-level ``rejection_sample`` (on CPU its
   C++ kernels ``torch.ops._C.rejection_*``) against the plugin's ``specdecode_rejection_sample``
   (``sd.rejection_sample_ragged`` from logits), both called exactly as vLLM's ``RejectionSampler``
   calls them: flattened drafts, ``[N, V]`` float32 logits, vLLM's bonus ids and metadata, buffers
   reused across repeats. Modes: greedy, random with draft probabilities, n-gram (no draft
   probabilities), mixed (half greedy, half random).
2. **End to end**: output tokens/s of a vLLM engine (the tiny local Llama pair of
   ``tests/vllm/tiny_models.py``, a draft model with K = 4) with the plugin vs vLLM's own verifier
   (``SPECDECODE_VLLM_PLUGIN=cpu-fix-only``: both with correct temperatures), greedy and sampled,
   one engine per child process.

Rows are saved as ``bench/out/vllm.json``; a table per part is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench.plots import print_table
from bench.report import load_rows, rows_path, save_rows
from bench.timing import median_ms

TOPIC = "vllm"
REPO = Path(__file__).resolve().parent.parent
KERNEL_SIZES = [(1, 4, 32000), (8, 4, 32000), (64, 4, 32000), (64, 8, 128256), (256, 4, 151936)]
QUICK_KERNEL_SIZES = [(1, 4, 32000), (8, 4, 32000)]
MODES = ("greedy", "random", "ngram", "mixed")
MIN_REPS = 5
MIN_SECONDS = 0.5
E2E_PROMPTS = 8
E2E_TOKENS = 128
QUICK_E2E_TOKENS = 32


# ---------------------------------------------------------------------------------------------
# 1. The verifier call
# ---------------------------------------------------------------------------------------------


def sampling_metadata(temperature: torch.Tensor):
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    batch = temperature.shape[0]
    return SamplingMetadata(
        temperature=temperature,
        all_greedy=bool((temperature == 0).all()),
        all_random=bool((temperature > 0).all()),
        top_p=None,
        top_k=None,
        generators={},
        max_num_logprobs=None,
        no_penalties=True,
        prompt_token_ids=None,
        frequency_penalties=torch.zeros(batch),
        presence_penalties=torch.zeros(batch),
        repetition_penalties=torch.ones(batch),
        output_token_ids=[[] for _ in range(batch)],
        allowed_token_ids_mask=None,
        bad_words_token_ids={},
        logitsprocs=LogitsProcessors(),
    )


def verifier_args(batch: int, num_drafts: int, vocab: int, mode: str) -> tuple:
    """vLLM's arguments for one verify step: every request has ``num_drafts`` drafts."""
    generator = torch.Generator().manual_seed(0)
    num_tokens = batch * num_drafts
    logits = torch.randn(num_tokens, vocab, generator=generator)
    drafts = torch.randint(0, vocab, (num_tokens,), generator=generator, dtype=torch.int32)
    draft_probs = None
    if mode in ("random", "mixed"):
        draft_probs = torch.randn(num_tokens, vocab, generator=generator).softmax(-1)
    temperature = {"greedy": 0.0, "random": 1.0, "ngram": 1.0, "mixed": 1.0}[mode] * torch.ones(batch)
    if mode == "mixed":
        temperature[::2] = 0.0
    counts = [num_drafts] * batch
    cu = torch.tensor(counts, dtype=torch.int32).cumsum(0).to(torch.int32)
    bonus = torch.randint(0, vocab, (batch, 1), generator=generator, dtype=torch.int32)
    return drafts, counts, num_drafts, cu, draft_probs, logits, bonus, sampling_metadata(temperature)


def run_kernels(sizes, log=print) -> list[dict]:
    import vllm.v1.sample.rejection_sampler as vllm_rejection
    from vllm.platforms import current_platform

    import specdecode.integrations.vllm as plugin

    current_platform.register_triton_kernel_overrides()  # vLLM's C++ kernels, as in its CPU engine
    vllm_own = vllm_rejection.rejection_sample
    rows = []
    for batch, num_drafts, vocab in sizes:
        for mode in MODES:
            args = verifier_args(batch, num_drafts, vocab, mode)
            vllm_ms = median_ms(lambda: vllm_own(*args), MIN_REPS, MIN_SECONDS)
            ours_ms = median_ms(lambda: plugin.specdecode_rejection_sample(*args), MIN_REPS, MIN_SECONDS)
            row = {"kind": "verifier", "B": batch, "K": num_drafts, "V": vocab, "mode": mode}
            row.update(vllm_ms=vllm_ms, specdecode_ms=ours_ms, speedup=vllm_ms / ours_ms)
            log(f"  B={batch} K={num_drafts} V={vocab} {mode}: vLLM {vllm_ms:.3f} ms, specdecode {ours_ms:.3f} ms")
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# 2. End to end
# ---------------------------------------------------------------------------------------------


def engine_request(models, max_tokens: int, temperature: float) -> dict:
    prompts = [[5 + i, 6 + i, 7 + i, 100 + i] for i in range(E2E_PROMPTS)]
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
        "jobs": [
            {"prompts": prompts, "sampling": {"temperature": 0.0, "max_tokens": max_tokens, "ignore_eos": True}},
            {
                "prompts": prompts,
                "sampling": {"temperature": temperature, "max_tokens": max_tokens, "ignore_eos": True},
            },
        ],
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


def run_e2e(max_tokens: int, log=print) -> list[dict]:
    sys.path.insert(0, str(REPO / "tests" / "vllm"))
    from tiny_models import build_tiny_models

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        models = build_tiny_models(workdir / "models")
        request = engine_request(models, max_tokens, temperature=0.8)
        for plugin, verifier in (("1", "specdecode"), ("cpu-fix-only", "vLLM")):
            result = run_engine(request, plugin, workdir)
            for job, sampling in zip(result["jobs"], ("greedy", "T=0.8")):
                tokens = sum(len(c) for prompt in job["token_ids"] for c in prompt)
                spec = job["spec"]
                row = {"kind": "e2e", "verifier": verifier, "sampling": sampling, "tokens": tokens}
                row.update(seconds=job["seconds"], tokens_per_s=tokens / job["seconds"])
                row.update(acceptance=spec["num_accepted_tokens"] / max(spec["num_draft_tokens"], 1))
                log(f"  {verifier} {sampling}: {row['tokens_per_s']:.1f} tokens/s, acceptance {row['acceptance']:.3f}")
                rows.append(row)
    return rows


def print_rows(rows: list[dict]) -> None:
    verifier = [r for r in rows if r["kind"] == "verifier"]
    if verifier:
        header = ["B", "K", "V", "mode", "vLLM ms", "specdecode ms", "speedup"]
        print_table(
            header,
            [[r["B"], r["K"], r["V"], r["mode"], r["vllm_ms"], r["specdecode_ms"], r["speedup"]] for r in verifier],
        )
    e2e = [r for r in rows if r["kind"] == "e2e"]
    if e2e:
        header = ["verifier", "sampling", "tokens", "seconds", "tokens/s", "acceptance"]
        print_table(
            header,
            [
                [r["verifier"], r["sampling"], r["tokens"], r["seconds"], r["tokens_per_s"], r["acceptance"]]
                for r in e2e
            ],
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small verifier sizes, 32 tokens end to end")
    parser.add_argument("--skip-e2e", action="store_true", help="only the verifier call")
    parser.add_argument("--skip-kernels", action="store_true", help="only the end-to-end run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the verifier call")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    if not args.skip_kernels:
        rows += run_kernels(QUICK_KERNEL_SIZES if args.quick else KERNEL_SIZES)
    if not args.skip_e2e:
        rows += run_e2e(QUICK_E2E_TOKENS if args.quick else E2E_TOKENS)
    print_rows(save_rows(TOPIC, kept_rows(args) + rows))


def kept_rows(args: argparse.Namespace) -> list[dict]:
    """The saved rows of the part this run skips (the parts are run one at a time when long)."""
    skipped = {"verifier"} if args.skip_kernels else set()
    skipped |= {"e2e"} if args.skip_e2e else set()
    if not skipped or not os.path.exists(rows_path(TOPIC)):
        return []
    return [row for row in load_rows(TOPIC) if row["kind"] in skipped]


if __name__ == "__main__":
    main()
