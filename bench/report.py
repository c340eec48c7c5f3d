"""Benchmark results as data, and their rendering.

Every benchmark's ``run(...)`` returns rows (a list of JSON-ready dicts) and saves them as
``<out_dir>/<topic>.json``; its ``section(rows, figures_dir)`` turns rows into a ``Section``:
prose, tables and figures. The same ``Section`` prints on the terminal (a benchmark's own CLI)
and becomes one part of the markdown report (``python -m bench``), so both show one rendering of
one set of numbers.

A benchmark module has ``TOPIC`` (the name of its JSON file), ``settings(quick)`` (``run``'s
arguments for the full or the ``--quick`` run), ``run(**settings, out_dir=..., log=...)`` and
``section(rows, figures_dir)``; ``python -m bench`` relies on nothing else.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType

import torch

from bench.plots import format_table, markdown_table

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
Log = Callable[..., object]  # where a benchmark's progress lines go: print, or a no-op

# ----------------------------------------------------------------------------- rows as JSON


def _json_ready(value):
    """Tuples become lists and NaN/inf become None, so the rows are standard JSON and the rows a
    run returns equal the rows read back from its file."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def rows_path(topic: str, out_dir: str = OUT_DIR) -> str:
    return os.path.join(out_dir, f"{topic}.json")


def save_rows(topic: str, rows: list[dict], out_dir: str | None = OUT_DIR) -> list[dict]:
    """Write ``rows`` to ``<out_dir>/<topic>.json`` (not at all when ``out_dir`` is None) and
    return them as they read back."""
    rows = _json_ready(rows)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        with open(rows_path(topic, out_dir), "w") as f:
            json.dump(rows, f, indent=1, allow_nan=False)
    return rows


def load_rows(topic: str, out_dir: str = OUT_DIR) -> list[dict]:
    with open(rows_path(topic, out_dir)) as f:
        return json.load(f)


def of_kind(rows: list[dict], kind: str) -> list[dict]:
    """The rows of one table of a benchmark whose rows hold several (``row["kind"]``)."""
    return [r for r in rows if r.get("kind") == kind]


# ----------------------------------------------------------------------------- sections


@dataclass
class Section:
    """One benchmark's part of the report: prose, tables and code blocks in order, then figures."""

    title: str
    about: str  # what it measures
    items: list[tuple] = field(default_factory=list)  # ("text", str) | ("code", str) | ("table", caption, header, rows)
    images: list[str] = field(default_factory=list)
    failed: bool = False

    def text(self, text: str) -> None:
        self.items.append(("text", text))

    def code(self, text: str) -> None:
        self.items.append(("code", text.rstrip()))

    def table(self, header: Sequence, rows: Sequence[Sequence], caption: str | None = None) -> None:
        self.items.append(("table", caption, list(header), [list(r) for r in rows]))

    def image(self, path: str | None) -> None:
        if path:
            self.images.append(path)

    def markdown(self, relative_to: str) -> str:
        chunks = [f"## {self.title}{' (FAILED)' if self.failed else ''}", self.about]
        for kind, *content in self.items:
            if kind == "table":
                caption, header, rows = content
                chunks += ([caption] if caption else []) + [markdown_table(header, rows)]
            elif kind == "code":
                chunks.append("```\n" + content[0] + "\n```")
            else:
                chunks.append(content[0])
        chunks += [f"![{os.path.basename(p)}]({os.path.relpath(p, relative_to)})" for p in self.images]
        return "\n\n".join(chunks) + "\n"

    def terminal(self) -> str:
        """The section as a benchmark's CLI prints it: fixed-width tables, no markdown images."""
        chunks = [f"== {self.title}", self.about]
        for kind, *content in self.items:
            if kind == "table":
                caption, header, rows = content
                chunks += ([caption] if caption else []) + [format_table(header, rows)]
            else:
                chunks.append(content[0])
        chunks += [f"figure: {p}" for p in self.images]
        return "\n\n".join(chunks)


def microbenchmark_main(module: ModuleType, argv: list[str] | None, quick_help: str, setup_note: str) -> None:
    """The CLI of an op microbenchmark: ``--quick`` and ``--threads``, a first line with torch's
    version, the threads and ``setup_note``, then the module's section rendered from its rows."""
    parser = argparse.ArgumentParser(description=module.__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default: torch's)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads; {setup_note}")
    rows = module.run(**module.settings(args.quick), threads=args.threads)
    print(module.section(rows).terminal())


def figure_path(figures_dir: str | None, name: str) -> str | None:
    """Where a figure goes, or None (no figure) when ``figures_dir`` is None."""
    return None if figures_dir is None else os.path.join(figures_dir, name)


def write_report(sections: list[Section], command: str, seconds: float, out_dir: str = OUT_DIR) -> str:
    """``<out_dir>/report.md``: a header (``command`` as markdown, the machine, the wall time) and
    every section."""
    os.makedirs(out_dir, exist_ok=True)
    header = (
        f"# specdecode benchmark report\n\nCommand: {command}\n\n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}, no GPU. "
        f"Wall time {seconds:.0f} s. Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n"
    )
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join([header] + [s.markdown(out_dir) for s in sections]))
    return path
