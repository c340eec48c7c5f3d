"""Run the benchmarks, save their rows as JSON and render ``bench/out/report.md`` plus PNG figures.

    python -m bench                      # everything, the README's numbers (long: prints progress)
    python -m bench --quick              # every section at small sizes, a few minutes
    python -m bench --quick seed gpu     # only some sections
    python -m bench --render             # the report again from bench/out/*.json, running nothing
    python -m bench --list               # the sections and what each measures

Sections (in this order): rejection_sample, topk_prune, compact_kv (the op microbenchmarks on
CPU; ``ops`` selects all three), gpu (GPU readiness: AOT compile facts and a bytes model), seed
(the 1,000,000-sample losslessness experiment and greedy), e2e (speculative vs plain decoding on
the shipped pair), best_of_n (Speculative Rejection vs Best-of-N, and partial-vs-final rewards).
The old names verifier, pruning, compaction and spr still select them. Each section's module
returns rows and saves ``bench/out/<topic>.json``; the report is rendered from those rows only. A
section that fails is reported in the report and the exit code, and the others still run.
``bench/out/`` is git-ignored; figures need matplotlib (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import time
import traceback
from types import ModuleType

import torch

from bench import plots
from bench.report import OUT_DIR, Section, load_rows, rows_path, write_report

SECTIONS = {  # name: the module that runs and renders it, in the report's order
    "rejection_sample": "bench.bench_rejection_sample",
    "rejection_sample_ragged": "bench.bench_rejection_sample_ragged",
    "tree_rejection_sample": "bench.bench_tree_rejection_sample",
    "topk_prune": "bench.bench_topk_prune",
    "compact_kv": "bench.bench_compact_kv",
    "gpu": "bench.gpu_report",
    "seed": "bench.seed_experiment",
    "e2e": "bench.bench_e2e",
    "tree_decoding": "bench.bench_tree_decoding",
    "best_of_n": "bench.bench_best_of_n",
}
ALIASES = {
    "ops": ["rejection_sample", "rejection_sample_ragged", "tree_rejection_sample", "topk_prune", "compact_kv"],
    "verifier": ["rejection_sample"],
    "pruning": ["topk_prune"],
    "compaction": ["compact_kv"],
    "spr": ["best_of_n"],
}


def choose(names: list[str]) -> list[str]:
    """Section names in the order given, aliases expanded, each once; ValueError on an unknown one."""
    chosen: list[str] = []
    for name in names or list(SECTIONS):
        for section in ALIASES.get(name, [name]):
            if section not in SECTIONS:
                raise ValueError(f"unknown section {section!r}; choose from {', '.join([*SECTIONS, *ALIASES])}")
            if section not in chosen:
                chosen.append(section)
    return chosen


def run_section(
    module: ModuleType, quick: bool, threads: int | None, weights_dir: str | None, out_dir: str
) -> list[dict]:
    """``module.run`` at its ``--quick`` or full settings, given ``threads`` and ``weights_dir``
    when it takes them and they are set; returns its rows (it also saves them in ``out_dir``)."""
    kwargs = module.settings(quick) | {"out_dir": out_dir}
    accepted = inspect.signature(module.run).parameters
    for name, value in (("threads", threads), ("weights_dir", weights_dir)):
        if value and name in accepted:
            kwargs[name] = value
    return module.run(**kwargs)


def failed_section(name: str, error: str) -> Section:
    section = Section(name, "This section raised an exception.", failed=True)
    section.code(error[-3000:])
    return section


def section_for(name: str, args: argparse.Namespace) -> Section | None:
    """Section ``name`` rendered from its rows: run now, or read back with ``--render`` (None when
    there are none to read)."""
    module = importlib.import_module(SECTIONS[name])
    if args.render:
        if not os.path.exists(rows_path(module.TOPIC, args.out)):
            print(f"(no rows at {rows_path(module.TOPIC, args.out)}: skipped)")
            return None
        rows = load_rows(module.TOPIC, args.out)
    else:
        rows = run_section(module, args.quick, args.threads, args.weights, args.out)
    return module.section(rows, args.out)


def collect(chosen: list[str], args: argparse.Namespace) -> list[Section]:
    """The chosen sections, in order; one that raises (even on import) becomes a FAILED section."""
    sections = []
    for i, name in enumerate(chosen):
        print(f"\n===== [{i + 1}/{len(chosen)}] {name} =====", flush=True)
        start = time.perf_counter()
        try:
            section = section_for(name, args)
        except Exception:  # report it, keep going with the other sections
            error = traceback.format_exc()
            print(error, file=sys.stderr, flush=True)
            section = failed_section(name, error)
        if section is not None:
            print(section.terminal(), flush=True)
            sections.append(section)
        print(f"===== {name}: {time.perf_counter() - start:.0f} s =====", flush=True)
    return sections


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes in all")
    parser.add_argument("--render", action="store_true", help="render the report from the saved rows, run nothing")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    parser.add_argument("--out", default=OUT_DIR, help="where the rows, the report and the figures go")
    parser.add_argument(
        "--weights", default=None, help="a (target, draft) directory instead of the shipped pair, for every section"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for every section (default: each benchmark's own; on a shared machine 1 avoids "
        "OpenMP spin stalls)",
    )
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join([*SECTIONS, *ALIASES])} (default: all)")
    args = parser.parse_args(argv)
    try:
        args.chosen = choose(args.sections)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.list:
        print(__doc__.split("\n\n")[2])
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if not plots.have_matplotlib():
        print("(matplotlib not installed: tables only; `pip install -e .[bench]` for the figures)")
    start = time.perf_counter()
    sections = collect(args.chosen, args)
    command = f"`{' '.join(['python -m bench', *argv])}`" + (" (quick mode: small sizes)" if args.quick else "")
    command += " (rendered from the saved rows)" if args.render else ""
    path = write_report(sections, command, time.perf_counter() - start, args.out)
    print(f"\nreport: {path}\nrows: {os.path.join(args.out, '<topic>.json')}")
    print("".join(f"figure: {p}\n" for s in sections for p in s.images), end="")
    return 1 if any(s.failed for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
