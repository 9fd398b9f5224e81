"""`python -m cluster plan|run SWEEP [key=value ...]`: the command-line entry point.

User mistakes (bad config, missing paths) print one line and exit 2, with no traceback and
nothing written; `plan` imports nothing heavy and answers in well under a second or two.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from cluster.errors import QuantsweepError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("plan", "print the cells of a sweep without running anything"),
        ("run", "run a sweep on Ray (RAY_ADDRESS, or an embedded local Ray)"),
    ):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("sweep", help="a sweep file, e.g. sweeps/smoke.yaml")
        sp.add_argument("overrides", nargs="*", help="config overrides, e.g. eval.actors=2 output_root=/runs")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the command, map user errors to one line and exit code 2."""
    args = _parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        from cluster.loader import load_sweep

        sweep, catalog = load_sweep(args.sweep, args.overrides)
        if args.command == "plan":
            from cluster.plan import plan
            from cluster.report import plan_table

            cells = plan(sweep, catalog)
            console.print(plan_table(cells, f"sweep {sweep.name}: {len(cells)} cells"))
            return 0
        from cluster.pipeline import run
        from cluster.report import print_report

        ctx = run(sweep, catalog, console)
        print_report(console, ctx.results)
        console.print(f"datasets under {ctx.root / 'datasets'}")
        return 0
    except QuantsweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
