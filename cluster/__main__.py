"""`python -m cluster plan|run|status|report|import`: the command-line entry point.

    plan SWEEP [key=value ...] [--cluster FILE] [--summary]
                                        the cells, their keys, placement, cost (GPU-hours, $) and
                                        status, checked against a cluster file; nothing runs
    run SWEEP [key=value ...] [--fresh] run every cell not yet committed (resume is the default)
    status [RUN_DIR]                    cells done, failed (with the error) or pending
    report [RUN_DIR] [key=value ...] [--out DIR] [--sweep FILE]
                                        HTML report, guideline dataset and model cards from the datasets
    import RESULTS.csv ... [--root DIR] published or external numbers into the datasets (README layout)

User mistakes (bad config, missing paths) print one `error:` line and exit 2, with no traceback and
nothing written; `plan` imports nothing heavy and answers in well under a second. `run` exits 1
when some cell failed (the others still ran and committed).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from rich.console import Console

from cluster.errors import QuantsweepError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("plan", "print the cells of a sweep without running anything"),
        ("run", "run a sweep on Ray (RAY_ADDRESS, or an embedded local Ray); resumes by default"),
    ):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("sweep", help="a sweep file, e.g. sweeps/smoke.yaml")
        sp.add_argument("overrides", nargs="*", help="config overrides, e.g. eval.actors=2 output_root=/runs")
        if name == "run":
            sp.add_argument("--fresh", action="store_true", help="recompute every cell, committed or not")
        else:
            sp.add_argument(
                "--cluster", help="a cluster file (conf/clusters/) to place and check the cells on"
            )
            sp.add_argument(
                "--summary", action="store_true", help="summaries and totals only, no line per cell"
            )
    st = sub.add_parser("status", help="list the cells of the runs under an output root")
    st.add_argument("root", nargs="?", default="runs", help="the run's output_root (default: runs)")
    rp = sub.add_parser(
        "report", help="write the HTML report, the guideline dataset and model cards of a run"
    )
    rp.add_argument("root", nargs="?", default="runs", help="the run's output_root (default: runs)")
    rp.add_argument(
        "overrides", nargs="*", help="report config overrides, e.g. recovery_floor=98 slo.ttft_ms=500"
    )
    rp.add_argument("--out", help="where the report goes (default: RUN_DIR/report)")
    rp.add_argument("--sweep", dest="sweep_file", help="judge by this sweep file's report: section")
    im = sub.add_parser("import", help="import published or external results (CSV) into a run's datasets")
    im.add_argument("results", nargs="+", help="CSV files in the layout README.md documents")
    im.add_argument("--root", default="runs", help="the output root to write into (default: runs)")
    im.add_argument(
        "--sweep", help="the sweep name of the imported rows (default: import-<first file's stem>)"
    )
    im.add_argument(
        "--source", help="where the numbers come from (default: each file's source column, else its path)"
    )
    return p


def _console() -> Console:
    tty = sys.stdout.isatty()  # a log file gets plain, unwrapped lines
    return Console(width=None if tty else 200, soft_wrap=not tty, log_path=False)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the command, map user errors to one line and exit code 2."""
    args = _parser().parse_args(argv)
    console = _console()
    try:
        if args.command == "status":
            return _status(console, Path(args.root))
        if args.command == "report":
            return _report(console, args.root, args.overrides, args.out, args.sweep_file)
        if args.command == "import":
            return _import(console, args)
        from cluster.config.loader import load_sweep
        from cluster.plan.cells import plan
        from serve.host import detect

        sweep, catalog = load_sweep(args.sweep, args.overrides)
        if args.command == "plan":
            return _plan(console, sweep, catalog, args.cluster, args.summary)
        host = detect()
        cluster = _cluster(sweep.placement.cluster, catalog)
        cells = plan(sweep, catalog, host, cluster)
        return _run(console, sweep, catalog, host, cells, args.fresh)
    except QuantsweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _cluster(path: str | None, catalog):
    from cluster.config.clusters import load_cluster

    return load_cluster(path, catalog) if path else None


def _plan(console: Console, sweep, catalog, cluster_file: str | None, summary: bool) -> int:
    """Print the costed plan; a sweep placed on GPUs is planned as the GPU cluster's driver sees it."""
    from cluster.plan.cells import plan
    from cluster.plan.cost import estimate
    from cluster.plan.fit import rejections
    from cluster.report.planview import PlanView, print_plan
    from serve.host import detect, gpu_driver

    on_gpus = bool(sweep.placement.hardware or sweep.placement.stages)
    host = gpu_driver() if on_gpus else detect()
    cluster = _cluster(cluster_file or sweep.placement.cluster, catalog)
    cells = plan(sweep, catalog, host, cluster)
    view = PlanView(
        cells, estimate(cells, sweep, catalog), rejections(cells, cluster) if cluster else {}, cluster
    )
    where = f"GPU cluster '{cluster.name}'" if cluster else ("a GPU cluster" if on_gpus else "this host")
    console.print(f"host: {host.describe()}; placed on {where}", markup=False)
    print_plan(console, view, f"sweep {sweep.name}: {len(cells)} cells", per_cell=not summary)
    return 0


def _run(console: Console, sweep, catalog, host, cells, fresh: bool) -> int:
    from cluster.config.loader import REPO_ROOT
    from cluster.config.tasks import check_tasks
    from cluster.report.tables import print_report
    from cluster.run.env import RunEnv
    from cluster.run.executor import Executor, Summary
    from cluster.run.ray_init import init_ray
    from cluster.store import manifest
    from cluster.store.provenance import Provenance, config_hash, git_sha

    check_tasks(sweep, catalog)  # before anything is written or started
    if sweep.serve.enabled and any(c.stage.startswith("loadtest") and c.status == "planned" for c in cells):
        from cluster.errors import ConfigError
        from serve.config import MissingSecret, api_key

        try:
            api_key(sweep.serve)  # the load generator sends it from this process
        except MissingSecret as e:
            raise ConfigError(str(e)) from None
    root = Path(sweep.output_root).resolve()
    resolved = {
        "sweep": asdict(sweep),
        "models": {m: asdict(catalog.models[m]) for m in sweep.models},
        "formats": {f: asdict(catalog.formats[f]) for f in sweep.formats},
    }
    prov = Provenance(config_hash(resolved), git_sha(REPO_ROOT), sweep.seed)
    root.mkdir(parents=True, exist_ok=True)
    manifest.write_plan(root, sweep.name, prov.run_id, host.describe(), cells)
    console.log(
        f"sweep {sweep.name}: {len(cells)} cells, run {prov.run_id}, host {host.describe()}, outputs under {root}"
    )
    env = RunEnv(sweep, catalog, str(root), host, prov, gpu=host.vllm_build == "gpu")
    if not fresh and all(manifest.is_committed(root, c.key) for c in cells):
        console.log(f"all {len(cells)} cells already committed; nothing to run (--fresh recomputes them)")
        summary = Summary(done=len(cells), resumed=len(cells))
    else:
        summary = Executor(env, cells, console, fresh, init_ray(sweep)).run()
    print_report(console, root, sweep.name)
    _report_after_run(console, root, sweep.report)
    console.print(
        f"datasets under {root / 'datasets'}; cells: {summary.done} done, {summary.skipped} skipped, "
        f"{len(summary.failed)} failed ({summary.resumed} already committed before this run)"
    )
    for label in summary.failed:
        console.print(f"failed: {label}", markup=False)
    return 1 if summary.failed else 0


def _report(
    console: Console, root_arg: str, overrides: list[str], out: str | None, sweep_file: str | None
) -> int:
    from cluster.config.reportcfg import resolve
    from cluster.errors import ConfigError
    from cluster.report.build import build, print_summary

    if "=" in root_arg and not Path(root_arg).exists():  # `report recovery_floor=98`: an override, not a path
        root_arg, overrides = "runs", [root_arg, *overrides]
    root = Path(root_arg)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such run directory")
    target = Path(out) if out else root / "report"
    print_summary(console, build(root, target, resolve(root, target, sweep_file, overrides)))
    return 0


def _report_after_run(console: Console, root: Path, cfg) -> None:
    """The report of a finished run (its recovery table is already printed); a report problem never fails the run."""
    from cluster.report.build import build, print_summary

    try:
        print_summary(console, build(root, root / "report", cfg), with_recovery=False)
    except QuantsweepError as exc:
        console.print(f"no report: {exc}", markup=False)
    except Exception as exc:  # a report bug must not fail a run whose cells all committed
        console.print(
            f"report failed ({type(exc).__name__}: {exc}); rerun: python -m cluster report {root}",
            markup=False,
        )


def _import(console: Console, args: argparse.Namespace) -> int:
    from cluster.report.imports import import_files

    for line in import_files([Path(p) for p in args.results], Path(args.root), args.sweep, args.source):
        console.print(line, markup=False)
    return 0


def _status(console: Console, root: Path) -> int:
    from cluster.report.tables import status_table
    from cluster.store import manifest

    plans = manifest.read_plans(root)
    if not plans:
        print(f"error: {root}: no run found (no plans/*.json)", file=sys.stderr)
        return 2
    for snap in plans:
        rows = []
        for data in snap["cells"]:
            cell = manifest.cell_from(data)
            m = manifest.read(root, cell.key)
            state = m["status"] if m else "pending"
            info = (m.get("error") or m.get("note") or "") if m else ""
            rows.append((cell, state, info))
        counts = {
            s: sum(1 for _, st, _ in rows if st == s)
            for s in ("done", "skipped", "failed", "blocked", "pending")
        }
        title = f"sweep {snap['sweep']} (run {snap['run_id']}): " + ", ".join(
            f"{n} {s}" for s, n in counts.items() if n
        )
        console.print(status_table(rows, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
