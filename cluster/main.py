"""Command-line entry point: ``python -m cluster.main {train,eval,prepare-model,sample}``.

The same entry point runs locally (it starts its own Ray) and under
``ray job submit --working-dir . -- python -m cluster.main ...`` on a cluster.
User errors (config, data, model) end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cluster.config import DEFAULT_CONFIG, ConfigError, ScoreConfig, load_config
from cluster.model_prep import ModelPrepError, prepare_model
from rewards.tasks import TaskDataError, build_task

USER_ERRORS = (ConfigError, TaskDataError, ModelPrepError)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override, e.g. --set learner.lr=1e-6 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cluster.main",
        description="SCoRe on Ray: train language models to self-correct with multi-turn RL.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="run SCoRe training (Stage I, then Stage II)")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")

    p = sub.add_parser("eval", help="evaluate a model's self-correction (Accuracy@t1/t2, deltas)")
    _add_config_args(p)
    p.add_argument("--model", help="model folder, checkpoint or hub name (default: model.path)")

    p = sub.add_parser("prepare-model", help="prepare the model folder once (default: the embedded model)")
    p.add_argument("--model", default="embedded", help="'embedded', a local HF folder, or a hub name")
    p.add_argument("--cache-dir", help="cache directory (default: $SCORE_CACHE_DIR or ~/.cache/score-on-ray)")

    p = sub.add_parser("sample", help="print sample problems from the task with the model's greedy answers")
    _add_config_args(p)
    p.add_argument("-n", type=int, default=1, help="number of problems (default: %(default)s)")
    return parser


def _prepare(cfg: ScoreConfig, model: str | None = None) -> str:
    return prepare_model(model or cfg.model.path, cfg.model.cache_dir)


def cmd_prepare_model(args: argparse.Namespace) -> int:
    print(prepare_model(args.model, args.cache_dir))
    return 0


def cmd_sample(args: argparse.Namespace, cfg: ScoreConfig) -> int:
    task = build_task(cfg.task, seed=cfg.run.seed)
    problems = task.problems("eval")[: args.n]
    model_path = _prepare(cfg)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from actors.engine import make_llm
    from vllm import SamplingParams

    llm = make_llm(model_path, seed=cfg.run.seed, dtype=cfg.model.dtype)
    params = SamplingParams(temperature=0.0, max_tokens=cfg.eval.max_tokens)
    outputs = llm.chat([task.first_turn(p) for p in problems], params, use_tqdm=False)
    for problem, out in zip(problems, outputs):
        print(f"\n[{task.name}] {problem.uid}\nproblem: {problem.question}\nmodel (greedy): {out.outputs[0].text.strip()}\ngold: {problem.gold}")
    return 0


def cmd_not_ready(args: argparse.Namespace, cfg: ScoreConfig) -> int:
    # Validate everything the command would touch, so a user learns about bad input now.
    task = build_task(cfg.task, seed=cfg.run.seed)
    for split in ("train", "eval"):
        if split == "train" and args.command == "eval":
            continue
        task.problems(split)
    for report in task.reports:
        print(report.summary())
    _prepare(cfg, getattr(args, "model", None))
    print(
        f"error: '{args.command}' is not available yet: the SCoRe driver is still being built "
        "(see the open issues); the config, task data and model above are valid",
        file=sys.stderr,
    )
    return 3


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "prepare-model":
            return cmd_prepare_model(args)
        cfg = load_config(Path(args.config), args.overrides)
        if args.command == "sample":
            return cmd_sample(args, cfg)
        return cmd_not_ready(args, cfg)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
