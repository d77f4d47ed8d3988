"""End-to-end iteration benchmark: one SCoRe iteration broken into generate, grade, learn and
sync, at three batch sizes, with a linear fit of how the cost grows with the batch.

    python -m bench iteration [--tiny]

Each batch size builds the real system (generator fleet, reward pool, DeepSpeed learner group)
from ``configs/local_cpu.yaml`` with ``problems_per_iteration`` set, runs one warm-up iteration
and then measures (the tiny smoke setting skips the warm-up). The fit is ``seconds = fixed + per_problem * problems`` by least squares,
per phase and for the whole iteration.

Ratios reported (all measured in this run; the breakdown is in the dtype ``auto`` picks here):
- one iteration at the middle size in that dtype against the other dtype;
- seconds per problem at the largest batch against the smallest (below 1: the fixed costs of
  an iteration are amortised by larger batches);
- the time outside the learner (generate + grade + sync) against the learner's own time;
- a Stage II iteration with three attempts (``algorithm.attempts: 3``) against two, and its learner time;
- a Stage II iteration with half of its problems on base-model first attempts
  (``algorithm.stage2_base_first_attempts: 0.5``) against one without, and the cost of sampling
  those first attempts up front (cluster/base_attempts.py) per Stage II iteration, against the
  generation time of an iteration without them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BenchResult, Measurement

PHASES = ("generate", "grade", "learn", "sync")


_MEASURED: dict[tuple[int, bool, int, str, str, float, int], dict[str, Any]] = {}  # `bench all` measures a size once


def measure(problems: int, *, tiny: bool, measured: int, dtype: str = "auto", model_name: str = "embedded",
            base_share: float = 0.0, attempts: int = 2) -> dict[str, Any]:
    """Mean phase seconds of ``measured`` Stage II iterations (after one warm-up) at ``problems`` per iteration;
    ``base_share``: algorithm.stage2_base_first_attempts (its up-front sampling is ``base_fill_seconds``);
    ``attempts``: algorithm.attempts."""
    import ray

    key = (problems, tiny, measured, dtype, model_name, base_share, attempts)
    if key not in _MEASURED:
        started = not ray.is_initialized()
        if started:
            ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            _MEASURED[key] = _measure(problems, tiny=tiny, measured=measured, dtype=dtype, model_name=model_name, base_share=base_share,
                                     attempts=attempts)
        finally:
            if started:
                ray.shutdown()
    return _MEASURED[key]


def _measure(problems: int, *, tiny: bool, measured: int, dtype: str, model_name: str, base_share: float, attempts: int) -> dict[str, Any]:
    from cluster.config import DEFAULT_CONFIG, load_config
    from cluster.model_prep import prepare_model
    from cluster.trainer import ScoreTrainer
    from rewards.tasks import build_task

    warmup = 0 if tiny else 1  # iteration 0 (Stage I) warms up; the measured ones are Stage II
    sets = [f"rollout.problems_per_iteration={problems}", "run.progress=false", "run.dashboard=false",
            f"algorithm.stage1_iterations={warmup}", f"algorithm.stage2_iterations={measured}",
            f"algorithm.stage2_base_first_attempts={base_share}", f"algorithm.attempts={attempts}", f"model.dtype={dtype}",
            f"model.path={model_name}"]
    if tiny:
        sets += ["rollout.samples_per_problem=2", "rollout.attempt1.max_tokens=16", "rollout.attempt2.max_tokens=16",
                 "rollout.cpu_kv_cache_gb=0.25", "rollout.max_model_len=512", "task.train_size=20", "task.eval_size=4"]
    cfg = load_config(DEFAULT_CONFIG, sets)
    task = build_task(cfg.task, seed=cfg.run.seed)
    model_path = prepare_model(cfg.model.path, cfg.model.cache_dir)
    with tempfile.TemporaryDirectory(prefix="bench-iteration-") as tmp:
        trainer = ScoreTrainer(cfg, model_path, Path(tmp), progress=False)
        trainer._say = lambda text: None  # noqa: E731 - quiet inside the bench
        try:
            t0 = time.monotonic()
            trainer.build(task)
            build_s = time.monotonic() - t0
            fill_s = 0.0
            if base_share:
                trainer.base_attempts = trainer._base_first_attempts()
                fill_s = trainer.base_attempts.seconds
            rows = []
            for i in range(warmup + measured):
                m = trainer.step(i)
                if i >= warmup:
                    rows.append(m)
        finally:
            trainer.shutdown()
    out = {p: float(np.mean([r[f"seconds_{p}"] for r in rows])) for p in PHASES}
    out["iteration"] = float(np.mean([r["seconds_iteration"] for r in rows]))
    out["generated_tokens"] = float(np.mean([r["generated_tokens"] for r in rows]))
    out["samples"] = problems * cfg.rollout.samples_per_problem
    out["build_seconds"] = build_s
    out["base_fill_seconds"] = fill_s
    return out


def fit(sizes: list[int], seconds: list[float]) -> dict[str, float]:
    """Least-squares ``seconds = fixed + per_problem * size`` and its R²."""
    x, y = np.asarray(sizes, float), np.asarray(seconds, float)
    per, fixed = np.polyfit(x, y, 1)
    pred = fixed + per * x
    ss = float(((y - y.mean()) ** 2).sum())
    return {"fixed_s": float(fixed), "per_problem_s": float(per), "r2": 1.0 - float(((y - pred) ** 2).sum()) / ss if ss else 1.0}


def run(tiny: bool = False, model_name: str = "embedded") -> BenchResult:
    """``model_name``: the embedded model, or any Hugging Face folder."""
    sizes, measured = ([1, 2], 1) if tiny else ([2, 4, 8], 2)
    points = {p: measure(p, tiny=tiny, measured=measured, model_name=model_name) for p in sizes}
    fits = {ph: fit(sizes, [points[p][ph] for p in sizes]) for ph in (*PHASES, "iteration")}
    small, large = sizes[0], sizes[-1]
    mid = sizes[len(sizes) // 2]
    result = BenchResult("iteration", settings={"problems_per_iteration": sizes, "measured_iterations": measured,
                                                "config": "configs/local_cpu.yaml", "tiny": tiny, "model": model_name})
    result.extra = {"points": {str(p): v for p, v in points.items()}, "fit": fits}
    outside = points[mid]["generate"] + points[mid]["grade"] + points[mid]["sync"]
    from common.devices import other_dtype, resolve_dtype

    auto = resolve_dtype("auto")
    other = other_dtype(auto)
    # the other dtype at the middle size; the smoke setting takes the smallest (bf16 on a CPU without it is slow)
    at = small if tiny else mid
    contrast = measure(at, tiny=tiny, measured=measured, dtype=other, model_name=model_name)
    result.extra["contrast"] = {"dtype": other, "problems": at, **contrast}
    result.settings["dtype"] = auto
    based = measure(mid, tiny=tiny, measured=measured, model_name=model_name, base_share=0.5)
    result.extra["base_first_attempts"] = {"share": 0.5, "problems": mid, **based}
    three = measure(mid, tiny=tiny, measured=measured, model_name=model_name, attempts=3)
    result.extra["three_attempts"] = {"attempts": 3, "problems": mid, **three}
    result.measurements += [
        Measurement(f"iteration s at P={at}, {auto} vs {other}", points[at]["iteration"], "s", f"{other}, same iteration",
                    contrast["iteration"], higher_is_better=False),
        Measurement(f"iteration s/problem at P={large}", points[large]["iteration"] / large, "s",
                    f"s/problem at P={small}", points[small]["iteration"] / small, higher_is_better=False),
        Measurement(f"generate+grade+sync s at P={mid}", outside, "s", f"learn s at P={mid}", points[mid]["learn"], higher_is_better=False),
        Measurement(f"Stage II iteration s at P={mid}, base first attempts 0.5", based["iteration"], "s", "share 0, same iteration",
                    points[mid]["iteration"], higher_is_better=False),
        Measurement(f"base first attempts: up-front sampling s per Stage II iteration at P={mid}", based["base_fill_seconds"] / measured, "s",
                    f"generate s per iteration at P={mid}, share 0", points[mid]["generate"], higher_is_better=False),
        Measurement(f"Stage II iteration s at P={mid}, 3 attempts", three["iteration"], "s", "2 attempts, same iteration",
                    points[mid]["iteration"], higher_is_better=False),
        Measurement(f"learn s at P={mid}, 3 attempts", three["learn"], "s", "2 attempts", points[mid]["learn"], higher_is_better=False),
    ]
    lines = [f"{'P':>3} " + " ".join(f"{ph:>9}" for ph in (*PHASES, "iteration"))]
    lines += [f"{p:>3} " + " ".join(f"{points[p][ph]:9.2f}" for ph in (*PHASES, "iteration")) for p in sizes]
    lines.append("fit " + " ".join(f"{fits[ph]['fixed_s']:5.1f}+{fits[ph]['per_problem_s']:.2f}P" for ph in (*PHASES, "iteration")))
    result.extra["breakdown_table"] = "\n".join(lines)
    print(result.extra["breakdown_table"], flush=True)
    return result
