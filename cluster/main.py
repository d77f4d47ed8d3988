"""Command-line entry point: ``python -m cluster.main {train,eval,prepare-model,sample}``.

The same entry point runs locally (it starts its own Ray) and under
``ray job submit --working-dir . -- python -m cluster.main ...`` on a cluster.
User errors (config, data, model) end in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from cluster.config import DEFAULT_CONFIG, ConfigError, ScoreConfig, for_dtype, load_config, resume_config
from cluster.model_prep import ModelPrepError, prepare_model
from common.files import replace_text
from common.logs import setup_logging
from rewards.tasks import TaskDataError, build_task

USER_ERRORS = (ConfigError, TaskDataError, ModelPrepError)
log = logging.getLogger("cluster.main")  # not __name__: run with -m, that is "__main__", outside the one level switch


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
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint of this run, with the config it was started with (its config.yaml) "
                        "and any --set on top")
    p.add_argument("--force-config-change", action="store_true",
                   help="with --resume: allow --set to change the batch shape, k, the ranks, the task, the model or the algorithm")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if the run directory has results")

    p = sub.add_parser("eval", help="evaluate a model's self-correction (Accuracy@t1/t2, deltas)")
    _add_config_args(p)
    p.add_argument("--model", help="model folder (e.g. a run's hf_model), 'embedded' or hub name (default: model.path)")
    p.add_argument("--out", help="where to write eval.json / eval.csv (default: <output_dir>/<name>-eval)")
    p.add_argument("--split", choices=["eval", "val"],
                   help="held-out problems or the validation split (task.val_size of the training problems); default: eval.split, "
                        "which is eval unless the config says otherwise")
    p.add_argument("--first-attempts", metavar="FILE",
                   help="fixed first attempts saved by an earlier evaluation (e.g. a run's samples/eval_iter000000.parquet, the base "
                        "model's): the model under test writes only the later attempts, and fix_rate / break_rate compare "
                        "models on the same mistakes (replaces --split; eval.num_problems caps how many)")

    p = sub.add_parser("plan", help="print each GPU's estimated memory for a config (cluster/memory_plan.py)")
    _add_config_args(p)
    p.add_argument("--gpu-memory-gb", type=float, help="memory of one GPU (default: run.gpu_memory_gb)")

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
    # Ray, vLLM, torch and the trainer are heavy: each command imports them once its config and
    # data are known to be good, so mistakes are reported in a second
    from vllm import SamplingParams

    from actors.engine import make_llm

    llm = make_llm(model_path, seed=cfg.run.seed, dtype=cfg.model.dtype)
    params = SamplingParams(temperature=0.0, max_tokens=cfg.eval.max_tokens)
    outputs = llm.chat([task.first_turn(p) for p in problems], params, use_tqdm=False)
    for problem, out in zip(problems, outputs):
        print(f"\n[{task.name}] {problem.uid}\nproblem: {problem.question}\nmodel (greedy): {out.outputs[0].text.strip()}\ngold: {problem.gold}")
    return 0


def _run_dir(cfg: ScoreConfig) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


def train_config(args: argparse.Namespace) -> ScoreConfig:
    """The config ``train`` runs with: ``--config`` and ``--set``; with ``--resume``, the run's own ``config.yaml``
    (found from ``run.output_dir``/``run.name``) with ``--set`` on top (:func:`cluster.config.resume_config`)."""
    cfg = load_config(Path(args.config), args.overrides)
    if not args.resume:
        if args.force_config_change:
            raise ConfigError("--force-config-change goes with --resume")
        return cfg
    saved = _run_dir(cfg) / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume: {saved} not found; name the run with --set run.name=... (and run.output_dir)")
    return resume_config(saved, args.overrides, force=args.force_config_change)


def cmd_train(args: argparse.Namespace, cfg: ScoreConfig) -> int:
    task = build_task(cfg.task, seed=cfg.run.seed)
    for split in ("train", "val", "eval"):
        task.problems(split)
    for report in task.reports:
        log.info(report.summary())
    model_path = _prepare(cfg)
    from cluster.preflight import check_run  # transformers: after the config and data are known to be good

    check_run(cfg, model_path, task)  # the model's template and stop ids, the sequence lengths: before Ray starts
    run_dir = _run_dir(cfg)
    if run_dir.exists() and (run_dir / "metrics.jsonl").exists() and not args.resume:
        if not args.overwrite:
            raise ConfigError(f"run directory {run_dir} already has results; pass --resume to continue it, "
                              "--overwrite to start afresh, or --set run.name=<new name>")
        shutil.rmtree(run_dir)
    if args.resume and not (run_dir / "checkpoints").is_dir():
        raise ConfigError(f"--resume: {run_dir} has no checkpoints")
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    import ray  # heavy: see cmd_sample

    from actors.fleet import GenerationError
    from cluster.trainer import ScoreTrainer, ray_connect
    from learner.group import LearnerError

    started_here = not ray.is_initialized()
    url = ray_connect(cfg)
    if url:
        log.info(f"Ray dashboard: {url}")
    trainer = ScoreTrainer(cfg, model_path, run_dir, resume=args.resume)
    try:
        result = trainer.run(task)
    except (GenerationError, LearnerError) as err:
        print(f"error: {err}\nthe last checkpoint is intact: continue with --resume", file=sys.stderr)
        return 1
    finally:
        trainer.shutdown()
        if started_here:
            ray.shutdown()
    return 143 if result.interrupted else 0


def cmd_plan(args: argparse.Namespace, cfg: ScoreConfig) -> int:
    """The memory plan of ``cfg`` on GPUs (bf16 where ``model.dtype`` is auto); exit 1 when something does not fit."""
    from cluster.memory_plan import ModelShape, check_fits, memory_plan
    from common.devices import resolve_dtype

    dtype = resolve_dtype(cfg.model.dtype, gpu=True)
    plan = memory_plan(cfg, ModelShape.of(_prepare(cfg)), dtype, args.gpu_memory_gb)
    print(plan.table())
    try:
        check_fits(plan)
    except ConfigError as err:
        print(f"\ndoes not fit: {err}")
        return 1
    return 0


def _fixed_first_attempts(path: str, task, model_path: str):
    """``eval --first-attempts``: the file's problems and first attempts, checked against the model's tokenizer."""
    from transformers import AutoTokenizer

    from actors.prompts import ChatFormatter
    from cluster.evaluate import load_first_attempts

    return load_first_attempts(path, task, ChatFormatter(AutoTokenizer.from_pretrained(model_path)))


def cmd_eval(args: argparse.Namespace, cfg: ScoreConfig) -> int:
    task = build_task(cfg.task, seed=cfg.run.seed)
    split = args.split or cfg.eval.split
    if not args.first_attempts and not task.problems(split):
        raise ConfigError("--split val needs a validation split: set task.val_size")
    model_path = _prepare(cfg, args.model)
    # checked before anything starts: fixed first attempts replace the split's problems
    problems, first = _fixed_first_attempts(args.first_attempts, task, model_path) if args.first_attempts else (task.problems(split), None)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    import pyarrow.parquet as pq  # heavy: see cmd_sample
    import ray

    from cluster.evaluate import METRICS, correction_rates, evaluate, format_correction, format_table
    from cluster.trainer import build_fleet, build_reward_pool, ray_connect, use_gpus
    from common.devices import machine_record, resolve_dtype

    started_here = not ray.is_initialized()
    ray_connect(cfg)
    gpus = use_gpus(cfg)
    dtype = resolve_dtype(cfg.model.dtype, gpu=gpus)
    cfg = for_dtype(cfg, dtype)
    n = cfg.eval.num_problems
    problems, first = problems[:n], (first.slice(0, n) if first is not None else None)
    fleet = build_fleet(cfg, model_path, gpus, dtype, wait=False)  # the engines start while the reward actors do
    pool = None
    try:
        pool = build_reward_pool(cfg)
        fleet.wait_started()
        metrics, batch = evaluate(fleet, pool, task, problems, temperature=cfg.eval.temperature, max_tokens=cfg.eval.max_tokens,
                                  attempts=cfg.eval.attempts, first=first)
    finally:
        fleet.shutdown()
        if pool is not None:
            pool.shutdown()
        if started_here:
            ray.shutdown()
    out = Path(args.out) if args.out else Path(cfg.run.output_dir) / f"{cfg.run.name}-eval"
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": model_path, "task": task.name, "split": None if first is not None else split,
              "first_attempts": str(Path(args.first_attempts).resolve()) if first is not None else None, **metrics,
              **correction_rates(batch["r1"].to_pylist(), batch["r2"].to_pylist()), "machine": machine_record(dtype)}
    replace_text(out / "eval.json", json.dumps(record, indent=1))  # its presence marks the evaluation done (experiment runner)
    with (out / "eval.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "task", *METRICS, "answer_changed", "text_identical", "fix_rate", "break_rate",
                                          "num_problems"], extrasaction="ignore")
        w.writeheader()
        w.writerow(record)
    pq.write_table(batch, out / "samples.parquet")
    print(format_table([(Path(model_path).name, metrics)]))
    print(format_correction(record))
    print(f"results: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "prepare-model":
            setup_logging()
            return cmd_prepare_model(args)
        cfg = train_config(args) if args.command == "train" else load_config(Path(args.config), args.overrides)
        setup_logging(cfg.run.log_level)
        if args.command == "sample":
            return cmd_sample(args, cfg)
        if args.command == "train":
            return cmd_train(args, cfg)
        if args.command == "plan":
            return cmd_plan(args, cfg)
        return cmd_eval(args, cfg)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
