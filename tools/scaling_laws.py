"""Scaling laws of 4M runs (or any table of runs): fit L(N, D) and write a report.

    python tools/scaling_laws.py fit --runs runs.csv --loss-col loss --loss-col 'loss/*' --json fit.json
    python tools/scaling_laws.py fit --runs published.csv --n-col N --flops-col C --loss-col L --json fit.json
    python tools/scaling_laws.py report --runs runs.csv --fit fit.json --out report/

The table is CSV or JSON lines, one row per run. N comes from --n-col (default `params`); D from
--d-col (default `tokens`) and/or C from --flops-col (default `flops`): the missing one follows from
C = k·N·D with k = --flops-per-param-token (6 for decoder-only LMs; about 3 for 4M, where each
token meets the encoder or the decoder). With both D and C in the table, k is estimated from it.
Each --loss-col (a name or a glob such as 'loss/*') gets its own fit: Approach 3 (Huber/L-BFGS,
cross-checked by variable projection), Approach 2 (IsoFLOP parabolas, when the runs form compute
budgets), bootstrap intervals and the compute-optimal allocation.
"""

from __future__ import annotations

import argparse
import json
import sys

from fourm_jax.scaling import fit, report
from fourm_jax.scaling.table import TableError, load_runs, write_atomic


def _fit(args) -> int:
    runs = load_runs(args.runs, loss_columns=args.loss_col, n_column=args.n_col, d_column=args.d_col,
                     flops_column=args.flops_col, flops_per_param_token=args.flops_per_param_token)
    document = fit.fit_runs(runs, bootstrap=args.bootstrap, seed=args.seed, confidence=args.confidence,
                            budget_rtol=args.budget_rtol)
    write_atomic(args.json, json.dumps(document, indent=1) + "\n")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    fit_parser = commands.add_parser("fit", help="fit scaling laws to a table of runs")
    fit_parser.add_argument("--runs", required=True, help="CSV or JSON-lines table, one row per run")
    fit_parser.add_argument("--n-col", help="column of parameter counts N (default: params)")
    fit_parser.add_argument("--d-col", help="column of training tokens D (default: tokens, if present)")
    fit_parser.add_argument("--flops-col", help="column of training FLOPs C (default: flops, if present)")
    fit_parser.add_argument("--loss-col", required=True, action="append",
                            help="loss column or glob; repeat for per-modality fits")
    fit_parser.add_argument("--json", required=True, help="where to write the fit document")
    fit_parser.add_argument("--flops-per-param-token", type=float, default=6.0,
                            help="k in C = k*N*D, to derive D or C when the table lacks one (default 6)")
    fit_parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (0: none)")
    fit_parser.add_argument("--confidence", type=float, default=0.95, help="interval coverage")
    fit_parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    fit_parser.add_argument("--budget-rtol", type=float, default=0.05,
                            help="runs within this relative compute difference form one IsoFLOP budget")
    fit_parser.set_defaults(run=_fit)

    report_parser = commands.add_parser("report", help="markdown + PNG report of a fit")
    report_parser.add_argument("--runs", required=True, help="the table the fit was made from")
    report_parser.add_argument("--fit", required=True, help="fit document written by `fit`")
    report_parser.add_argument("--out", required=True, help="output folder")
    report_parser.set_defaults(run=_report)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (TableError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
