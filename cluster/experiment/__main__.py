"""``python -m cluster.experiment run | status | report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.config import ConfigError
from cluster.experiment.arms import ARMS, BASE_SHARE, DESIGN_ARMS, TRANSFER, Plan, base_share
from cluster.experiment.grid import print_status, run
from cluster.experiment.report import report
from common.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.experiment", description="SCoRe's ablations: six arms x seeds, and their report.")
    p.add_argument("command", choices=["run", "status", "report"], help="run the grid, show where it stands, or rebuild the report")
    p.add_argument("--out", default="runs/experiment", help="where the runs go (default: %(default)s)")
    p.add_argument("--config", default="configs/experiment_cpu.yaml", help="shared settings of every run (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", choices=ARMS,
                   help="arms to run (default: all; plain_rl_base_first only when --score-set gives SCoRe base first attempts)")
    p.add_argument("--score-set", dest="score_sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting the pilots chose for SCoRe: (b), (c) and (d) take it; (f) takes only "
                        f"{BASE_SHARE}; (e) none")
    p.add_argument("--design", type=int, choices=sorted(DESIGN_ARMS), default=max(DESIGN_ARMS),
                   help="report: which design's arms and goal the result files hold (default: %(default)s; 1: docs/results/design1)")
    p.add_argument("--problems", type=int, default=500, help="held-out problems per final evaluation (default: %(default)s)")
    p.add_argument("--attempts", type=int, default=5, help="attempts in the final evaluation of (a) and (b); the others get 2 (default: %(default)s)")
    p.add_argument("--stage1", type=int, default=40, help="Stage I iterations of (b) and (d) (default: %(default)s)")
    p.add_argument("--stage2", type=int, default=40, help="Stage II iterations; (c) and (e) run stage1 + stage2 (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--results", default="docs/results/runs", help="one result file per finished run (default: %(default)s)")
    p.add_argument("--docs", default="docs/results", help="report output folder (default: %(default)s)")
    p.add_argument("--embed", default="docs/RESULTS.md", metavar="DOC",
                   help="report: also rewrite the block between the report markers in DOC; '' to skip (default: %(default)s)")
    p.add_argument("--transfer", nargs="*", default=list(TRANSFER), metavar="KEY=VALUE",
                   help="overrides that make the transfer set every run is also evaluated on; none: skip it (default: %(default)s)")
    p.add_argument("--sampled", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate every run on the held-out problems at the training temperature (default: on)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep a finished run's DeepSpeed checkpoints (default: drop them, keep hf_model)")
    p.add_argument("--allow-mixed-dtype", action="store_true",
                   help="run here even if this machine computes in another dtype than the finished runs did (default: refuse)")
    p.add_argument("--commit", action="store_true", help="git-commit each run's result file as it is written")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    a = p.parse_args(argv)
    setup_logging()
    try:
        arms = a.arms or [arm for arm in ARMS if arm != "plain_rl_base_first" or base_share(a.score_sets)]
        plan = Plan(Path(a.out), a.config, a.seeds, a.problems, a.stage1, a.stage2, a.overrides, Path(a.results), a.attempts, tuple(arms),
                    tuple(a.transfer), a.keep_checkpoints, a.allow_mixed_dtype, tuple(a.score_sets), a.sampled)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if a.command == "run":
        try:
            return run(plan, a.dry_run, a.commit)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if a.command == "status":
        return print_status(plan)
    return report(plan.results, Path(a.docs), Path(a.embed) if a.embed else None, design=a.design)


if __name__ == "__main__":
    sys.exit(main())
