"""Command line: ``python -m specdecode demo``."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m specdecode")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="show the ops at work, end to end",
        description="Four sections, each ending in what it showed: (1) a chi-square verdict that verification "
        "is lossless, (2) the C++ verifier against the pure-PyTorch reference (medians of repeats, beside the "
        "README's figure), (3) plain vs speculative decoding with the shipped pair, (4) Best-of-N vs Speculative "
        "Rejection, with one line for every row that loses at equal tokens and why.",
    )
    demo.add_argument("--quick", action="store_true", help="smaller runs (sections 1, 3 and 4)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from specdecode.demo import main as run_demo

        run_demo(quick=args.quick)


if __name__ == "__main__":
    main()
