"""Scaling laws of 4M runs (or any table of runs): run a sweep, fit L(N, D), write a report.

    python tools/scaling_laws.py sweep --config=configs/scaling/scenes_64.py --workdir runs/scaling \
        [--config.models.w48_l1.dim=64 ...] [--jobs 2] [--report docs/scaling_scenes]
    python tools/scaling_laws.py fit --runs runs.csv --loss-col loss --loss-col 'loss/*' --json fit.json
    python tools/scaling_laws.py fit --runs published.csv --n-col N --flops-col C --loss-col L --json fit.json
    python tools/scaling_laws.py report --runs runs.csv --fit fit.json --out report/

The table is CSV or JSON lines, one row per run. N comes from --n-col (default `params`); D from
--d-col (default `tokens`) and/or C from --flops-col (default `flops`): the missing one follows from
C = k·N·D with k = --flops-per-param-token (6 for decoder-only LMs; about 3 for 4M, where each
token meets the encoder or the decoder). With both D and C in the table, k is estimated from it.
`sweep` trains every unfinished point of a sweep config (fourm_jax/train/sweep.py; finished points
are skipped, interrupted ones resume) and writes WORKDIR/results.csv and results.jsonl; with
--report it then fits every loss column and writes the report there.
Each --loss-col (a name or a glob such as 'loss/*') gets its own fit: Approach 3 (Huber/L-BFGS,
cross-checked by variable projection), Approach 2 (IsoFLOP parabolas, when the runs form compute
budgets), bootstrap intervals and the compute-optimal allocation.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from fourm_jax import configs
from fourm_jax.files import write_atomic
from fourm_jax.scaling import fit, report
from fourm_jax.scaling.table import TableError, load_runs

SWEEP_LOSS_COLUMNS = ["loss", "loss/*"]


def _fit_table(args, table, loss_columns, out_json):
    runs = load_runs(table, loss_columns=loss_columns, n_column=args.n_col, d_column=args.d_col,
                     flops_column=args.flops_col, flops_per_param_token=args.flops_per_param_token)
    document = fit.fit_runs(runs, bootstrap=args.bootstrap, seed=args.seed, confidence=args.confidence,
                            budget_rtol=args.budget_rtol)
    write_atomic(out_json, json.dumps(document, indent=1) + "\n")
    return document


def _fit(args) -> int:
    document = _fit_table(args, args.runs, args.loss_col, args.json)
    for column, result in document["fits"].items():
        a3 = result["approach3"]
        line = (f"{column}: E={a3['E']:.4g} A={a3['A']:.4g} B={a3['B']:.4g} alpha={a3['alpha']:.4f} "
                f"beta={a3['beta']:.4f} a={a3['a']:.4f} b={a3['b']:.4f}")
        if "a" in result["approach2"]:
            line += f" | Approach 2: a={result['approach2']['a']:.4f} b={result['approach2']['b']:.4f}"
        print(line)
    print(f"wrote {args.json}")
    return 0


def _report(args) -> int:
    document = report.read_fit(args.fit)
    runs = report.runs_for_fit(args.runs, document)
    paths = report.write_report(runs, document, args.out)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def _sweep(args) -> int:
    from fourm_jax.train import sweep  # imports JAX: only for this command

    if args.multihost:
        import jax

        jax.distributed.initialize()
    config = configs.load(args.config, args.overrides)
    sweep.run_sweep(config, args.workdir, jobs=args.jobs, devices_per_job=args.devices_per_job,
                    only=tuple(args.only))
    table = pathlib.Path(args.workdir) / "results.csv"
    print(f"wrote {table}")
    if args.report:
        out = pathlib.Path(args.report)
        document = _fit_table(args, table, SWEEP_LOSS_COLUMNS, out / "fit.json")
        paths = report.write_report(report.runs_for_fit(table, document), document, out)
        print(f"wrote {out / 'fit.json'}, {', '.join(str(p) for p in paths)}")
    return 0


def _add_fit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-col", help="column of parameter counts N (default: params)")
    parser.add_argument("--d-col", help="column of training tokens D (default: tokens, if present)")
    parser.add_argument("--flops-col", help="column of training FLOPs C (default: flops, if present)")
    parser.add_argument("--flops-per-param-token", type=float, default=6.0,
                        help="k in C = k*N*D, to derive D or C when the table lacks one (default 6)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (0: none)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval coverage")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--budget-rtol", type=float, default=0.05,
                        help="runs within this relative compute difference form one IsoFLOP budget")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    fit_parser = commands.add_parser("fit", help="fit scaling laws to a table of runs")
    fit_parser.add_argument("--runs", required=True, help="CSV or JSON-lines table, one row per run")
    fit_parser.add_argument("--loss-col", required=True, action="append",
                            help="loss column or glob; repeat for per-modality fits")
    fit_parser.add_argument("--json", required=True, help="where to write the fit document")
    _add_fit_options(fit_parser)
    fit_parser.set_defaults(run=_fit)

    report_parser = commands.add_parser("report", help="markdown + PNG report of a fit")
    report_parser.add_argument("--runs", required=True, help="the table the fit was made from")
    report_parser.add_argument("--fit", required=True, help="fit document written by `fit`")
    report_parser.add_argument("--out", required=True, help="output folder")
    report_parser.set_defaults(run=_report)

    sweep_parser = commands.add_parser(
        "sweep", help="train a sweep's runs (skipping finished ones) and write the results table",
        epilog="--config.<field>=<value> overrides a field of the sweep config")
    sweep_parser.add_argument("--config", required=True,
                              help="sweep config file (configs/scaling/*.py[:arg])")
    sweep_parser.add_argument("--workdir", required=True, help="sweep directory (one workdir per run)")
    sweep_parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (subprocesses)")
    sweep_parser.add_argument("--devices-per-job", type=int, default=1,
                              help="devices of each concurrent run (CPU host devices / GPUs)")
    sweep_parser.add_argument("--only", action="append", default=[], help="train only this point (repeat)")
    sweep_parser.add_argument("--multihost", action="store_true",
                              help="call jax.distributed.initialize() (every host of a slice runs the sweep)")
    sweep_parser.add_argument("--report", help="fit the table and write the report into this folder")
    _add_fit_options(sweep_parser)
    sweep_parser.set_defaults(run=_sweep, flops_per_param_token=6.0)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    args.overrides = []
    for arg in unknown:
        if args.command != "sweep" or not arg.startswith("--config."):
            parser.error(f"unrecognized argument {arg}")
        args.overrides.append(arg[len("--config."):])
    try:
        return args.run(args)
    except (TableError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
