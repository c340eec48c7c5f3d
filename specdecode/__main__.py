"""Command line: ``python -m specdecode demo``."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m specdecode")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="show the ops at work, end to end")
    demo.add_argument("--quick", action="store_true", help="smaller runs")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from specdecode.demo import main as run_demo

        run_demo(quick=args.quick)


if __name__ == "__main__":
    main()
