"""The GPU validation kit: ``make gpu-check`` on a machine with a CUDA GPU and nothing but this repo.

1. Setup: a venv (``.venv-gpu``) with the pinned torch and Triton from PyPI (the Linux x86_64
   torch wheel there is the CUDA build), this package built in it, and each peer (FlashInfer,
   vLLM, sgl-kernel) installed by package name beside the same pinned torch; what installed and
   what did not (with pip's reason) is recorded. Then this script re-runs itself in that venv.
2. The GPU, its driver (nvidia-smi) and the versions torch, CUDA and Triton report.
3. The kernel test files with ``SPECDECODE_TEST_DEVICE=cuda``: the same test functions as the
   CPU suite, their Triton launchers on CUDA tensors with compiled kernels (tests/devices.py),
   long statistical runs included (``--quick``: not).
4. The benchmarks of bench/gpu_check_bench.py: verifier, pruning, compaction, peers side by side,
   bandwidth against the measured copy peak, the datasheet and bench/gpu_report.py's model.
5. ``report.json`` + ``report.md`` in ``bench/out/gpu_check/<UTC time>/``, printed at the end.

``--dry-run`` (``make gpu-check-dry``, run by CI) does all of it on the CPU with the Triton
interpreter and the repo's own ``.venv``: no install, small shapes, a few tests per op, peers
reported as not installed. This top part imports no torch: step 1 runs under any Python 3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PIN = "torch==2.13.0"
TRITON_PIN = "triton==3.9.0"
BUILD_TOOLS = ["numpy", "pytest", "ninja", "setuptools", "wheel"]
PEER_PACKAGES = {"flashinfer": "flashinfer-python", "vllm": "vllm", "sgl-kernel": "sgl-kernel"}
KERNEL_TEST_FILES = [
    "tests/test_rejection_sample.py",
    "tests/test_losslessness.py",
    "tests/test_topk_prune.py",
    "tests/test_compact_kv.py",
    "tests/test_tree_rejection_sample.py",
    "tests/test_rejection_sample_ragged.py",
    "tests/test_bad_input.py",
    "tests/test_device_switch.py",
]
# The dry run's tests: the switch's own, and a few launches of every op under the interpreter.
DRY_TEST_SELECTION = (
    "device_switch or (triton and (all_accepted_then_bonus or offsets_beyond_int32 or clamps_unvalidated"
    " or many_tiles_per_row or all_accepted_path_then_bonus or uneven_requests_with_bonus_rows))"
)
QUICK_TEST_SELECTION = "triton or device_switch"


def log(*parts) -> None:
    print(*parts, flush=True)


def run_logged(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    log("$ " + " ".join(command))
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO, **kwargs)


# ----------------------------------------------------------------------------- step 1: setup


def setup_venv(venv: str) -> tuple[str, dict]:
    """Create ``venv`` with the pinned CUDA torch and Triton and build this package there; skip
    what a previous run already did (a stamp of the pins). Returns its python and a record."""
    python = os.path.join(venv, "bin", "python")
    pip = [python, "-m", "pip", "install", "-q"]
    stamp = os.path.join(venv, ".specdecode-gpu-installed")
    wanted = f"{TORCH_PIN} {TRITON_PIN}"
    record = {"venv": venv, "reused": os.path.exists(stamp) and open(stamp).read() == wanted}
    if not record["reused"]:
        steps = [
            [sys.executable, "-m", "venv", venv],
            [*pip, "--upgrade", "pip"],
            [*pip, TORCH_PIN, TRITON_PIN, *BUILD_TOOLS],
        ]
        for command in steps:
            done = run_logged(command, timeout=1200)
            if done.returncode:
                raise SystemExit(f"setup failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    # The build always re-runs (seconds when nothing changed): csrc/ may have moved on.
    build = run_logged([*pip, "--no-build-isolation", "--no-deps", "-e", "."], timeout=1200)
    if build.returncode:
        raise SystemExit(f"build failed:\n{build.stderr[-3000:]}")
    with open(stamp, "w") as f:
        f.write(wanted)
    return python, record


def install_peers(python: str, timeout: float) -> dict[str, str]:
    """pip install each peer beside the pinned torch (so it cannot replace it); the status is
    'installed ...' or why not."""
    status = {}
    for name, package in PEER_PACKAGES.items():
        try:
            done = run_logged([python, "-m", "pip", "install", "-q", package, TORCH_PIN, TRITON_PIN], timeout=timeout)
        except subprocess.TimeoutExpired:
            status[name] = f"not installed: pip took over {timeout:.0f} s"
            continue
        if done.returncode:
            reason = " ".join(done.stderr.strip().splitlines()[-3:])[-600:]
            status[name] = f"not installed beside {TORCH_PIN}: {reason}"
        else:
            version = run_logged([python, "-m", "pip", "show", package], timeout=60).stdout
            line = next((s for s in version.splitlines() if s.startswith("Version:")), "Version: ?")
            status[name] = f"installed {package} {line.split(':', 1)[1].strip()}"
        log(f"  {name}: {status[name]}")
    return status


def setup_stage(args: argparse.Namespace) -> int:
    started = time.time()
    out_dir = args.out or os.path.join(REPO, "bench", "out", "gpu_check", time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    os.makedirs(out_dir, exist_ok=True)
    if args.dry_run:
        repo_python = os.path.join(REPO, ".venv", "bin", "python")
        python = repo_python if os.path.exists(repo_python) else sys.executable
        setup = {"venv": None, "dry_run": f"no install; {python}, CPU tensors, Triton interpreter"}
        peers = {name: "not installed (dry run: nothing is installed)" for name in PEER_PACKAGES}
        log(f"dry run: {setup['dry_run']}")
    else:
        python, setup = setup_venv(os.path.join(REPO, args.venv))
        peers = install_peers(python, timeout=90 if args.quick else 180)
    setup.update(seconds=time.time() - started, peers=peers)
    with open(os.path.join(out_dir, "setup.json"), "w") as f:
        json.dump(setup, f, indent=1)
    command = [python, "-m", "bench.gpu_check", "--stage", "check", "--out", out_dir]
    command += ["--dry-run"] * args.dry_run + ["--quick"] * args.quick
    return subprocess.call(command, cwd=REPO)


# ----------------------------------------------------------------------------- steps 2-5 (in the venv)


def environment(dry_run: bool) -> dict:
    import torch
    import triton

    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "triton": triton.__version__}
    info["python"] = sys.version.split()[0]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, capability=f"sm_{props.major}{props.minor}"
        )
        info["sm_count"] = props.multi_processor_count
    elif not dry_run:
        raise SystemExit(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA GPU")
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as error:
        info["nvidia_smi"] = f"not available: {error}"
    return info


def run_tests(out_dir: str, device: str, dry_run: bool, quick: bool) -> dict:
    """The kernel test files on ``device`` through the switch; counts per module and failures,
    read from pytest's JUnit XML."""
    import xml.etree.ElementTree as ElementTree

    junit = os.path.join(out_dir, "tests.xml")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    command += KERNEL_TEST_FILES
    if dry_run:
        command += ["-m", "not slow", "-k", DRY_TEST_SELECTION]
    elif quick:
        command += ["-m", "not slow", "-k", QUICK_TEST_SELECTION]
    else:
        command += ["-m", "slow or not slow"]  # every test of these files, the long statistical runs too
    started = time.time()
    done = run_logged(command, timeout=3600, env={**os.environ, "SPECDECODE_TEST_DEVICE": device})
    with open(os.path.join(out_dir, "pytest.log"), "w") as f:
        f.write(done.stdout + done.stderr)
    summary = {"command": " ".join(command[1:]), "device": device, "exit_code": done.returncode}
    summary.update(seconds=time.time() - started, modules={}, failures=[])
    if not os.path.exists(junit):
        summary["failures"].append(f"pytest wrote no report: {(done.stdout + done.stderr)[-2000:]}")
        return summary
    for case in ElementTree.parse(junit).iter("testcase"):
        module = case.get("classname", "?").split(".")[-1]
        counts = summary["modules"].setdefault(module, {"passed": 0, "failed": 0, "skipped": 0, "triton_passed": 0})
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        counts[{"failure": "failed", "error": "failed"}.get(outcome, outcome)] += 1
        counts["triton_passed"] += outcome == "passed" and "triton" in case.get("name", "")
        if outcome in ("failure", "error"):
            message = next(child for child in case if child.tag == outcome).get("message", "")
            summary["failures"].append(f"{module}::{case.get('name')}: {message[:300]}")
    log(f"tests on {device}: {summary['modules']} ({summary['seconds']:.0f} s)")
    return summary


def run_benchmarks(device_name: str, dry_run: bool, quick: bool, peer_status: dict) -> dict:
    import torch

    from bench import gpu_check_bench as gb

    device = torch.device("cpu" if dry_run else "cuda")
    reps = 20 if dry_run else (30 if quick else 100)
    sheet = gb.datasheet_tbs(device_name)
    copy_gbs = gb.copy_peak_gbs(device, 2**24 if dry_run else 2**30, reps)
    log(f"copy bandwidth {copy_gbs:.0f} GB/s (read + write); datasheet {sheet} TB/s")
    peers, status = gb.load_peers(peer_status, log)
    sizes = gb.sizes(dry_run, quick)
    verifier = gb.verifier_rows(device, sizes["verifier"], reps, peers, copy_gbs, sheet, log)
    return {
        "device": str(device),
        "copy_GBs": copy_gbs,
        "datasheet_TBs": sheet,
        "peers": status,
        "verifier": verifier,
        "topk_prune": gb.prune_rows(device, sizes["topk_prune"], reps, copy_gbs, sheet, log),
        "compaction": gb.compaction_rows(device, sizes["compaction"], reps, copy_gbs, sheet, log),
    }


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown_report(report: dict) -> str:
    from bench.plots import markdown_table

    env, tests, bench = report["environment"], report["tests"], report["benchmarks"]
    lines = [f"# specdecode GPU check{' (dry run: CPU + Triton interpreter)' if report['dry_run'] else ''}", ""]
    lines += [f"Command: `{report['command']}`; wall time {report['seconds']:.0f} s; {report['generated']}.", ""]
    lines += ["## Machine", "", markdown_table(["what", "value"], [[k, _fmt(v)] for k, v in env.items()]), ""]
    lines += ["## Setup", "", markdown_table(["what", "value"], [[k, _fmt(v)] for k, v in report["setup"].items()]), ""]
    verdict = "PASSED" if tests["exit_code"] == 0 else f"FAILED (pytest exit code {tests['exit_code']})"
    lines += [
        f"## Kernel tests on {tests['device']}: {verdict}",
        "",
        f"`{tests['command']}` ({tests['seconds']:.0f} s)",
        "",
    ]
    rows = [
        [m, c["passed"], c["failed"], c["skipped"], c["triton_passed"]] for m, c in sorted(tests["modules"].items())
    ]
    lines += [markdown_table(["module", "passed", "failed", "skipped", "passed with triton in the id"], rows), ""]
    lines += [f"- {failure}" for failure in tests["failures"]] + [""]
    lines += ["## Benchmarks", "", f"Device {bench['device']}: copy bandwidth {bench['copy_GBs']:.0f} GB/s measured"]
    lines += [f"(read + write), datasheet {_fmt(bench['datasheet_TBs'])} TB/s. Peers:", ""]
    lines += [f"- {name}: {status}" for name, status in bench["peers"].items()] + [""]
    for title, key in (
        ("Verifier (`rejection_sample`)", "verifier"),
        ("Pruning", "topk_prune"),
        ("Compaction", "compaction"),
    ):
        table_rows = bench[key]
        if not table_rows:
            continue
        header = list(dict.fromkeys(k for row in table_rows for k in row))
        lines += [
            f"### {title}",
            "",
            markdown_table(header, [[_fmt(r.get(k)) for k in header] for r in table_rows]),
            "",
        ]
    lines += ["`GBs` divides the bytes the call must move (verifier: gathered probabilities and sampled rows,"]
    lines += ["bench/bench_rejection_sample.py's `must_read_bytes`; pruning and compaction: bench/gpu_report.py's"]
    lines += ["model of the specdecode kernel) by its median time; `of_copy` and `of_datasheet` compare it with the"]
    lines += ["measured copy bandwidth and the datasheet peak. `model_*_bytes` are bench/gpu_report.py's bytes model."]
    return "\n".join(lines) + "\n"


def check_stage(args: argparse.Namespace) -> int:
    """Steps 2-5, inside the venv: environment, tests, benchmarks, the report."""
    started = time.time()
    with open(os.path.join(args.out, "setup.json")) as f:
        setup = json.load(f)
    env = environment(args.dry_run)
    for key, value in env.items():
        log(f"{key}: {value}")
    tests = run_tests(args.out, "cpu" if args.dry_run else "cuda", args.dry_run, args.quick)
    bench = run_benchmarks(env.get("gpu", "cpu"), args.dry_run, args.quick, setup.pop("peers"))
    report = {
        "command": "make gpu-check-dry" if args.dry_run else f"make gpu-check{' (--quick)' if args.quick else ''}",
        "dry_run": args.dry_run,
        "quick": args.quick,
        "seconds": time.time() - started + setup["seconds"],
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "setup": setup,
        "environment": env,
        "tests": tests,
        "benchmarks": bench,
    }
    from bench.report import _json_ready

    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(_json_ready(report), f, indent=1, allow_nan=False)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(markdown_report(report))
    log(f"\ntests: {'passed' if tests['exit_code'] == 0 else 'FAILED'}; {len(tests['failures'])} failures")
    log(f"GPU check report ({report['seconds']:.0f} s): {args.out}/report.md and report.json")
    return tests["exit_code"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU + Triton interpreter, no install, small shapes")
    parser.add_argument("--quick", action="store_true", help="no long statistical runs, fewer shapes (< 3 min)")
    parser.add_argument("--venv", default=".venv-gpu", help="the venv to create (relative to the repo)")
    parser.add_argument("--out", default=None, help="report folder (default bench/out/gpu_check/<UTC time>)")
    parser.add_argument("--stage", choices=["setup", "check"], default="setup", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return check_stage(args) if args.stage == "check" else setup_stage(args)


if __name__ == "__main__":
    sys.exit(main())
