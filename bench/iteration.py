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
- episodes per second with generation and learning overlapped (``rollout.off_policy_steps: 1``) against the
  synchronous loop, on the same iterations, the generator and the learner rank on a core each (1 + 1 threads),
  8 problems x 4 samples; and each side's idle share both ways, with one iteration's timeline of each. The
  bound the overlap can reach is (rollout + learn + sync) / (max(rollout, learn) + sync) of the synchronous run;
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


_MEASURED: dict[tuple, dict[str, Any]] = {}  # `bench all` measures a size once


def measure(problems: int, *, tiny: bool, measured: int, dtype: str = "auto", model_name: str = "embedded",
            base_share: float = 0.0, attempts: int = 2, off_policy_steps: int = 0, split_cores: bool = False) -> dict[str, Any]:
    """Mean phase seconds of ``measured`` Stage II iterations (after one warm-up) at ``problems`` per iteration;
    ``base_share``: algorithm.stage2_base_first_attempts (its up-front sampling is ``base_fill_seconds``);
    ``attempts``: algorithm.attempts; ``off_policy_steps``: rollout.off_policy_steps; ``split_cores``: one compute
    thread for the generator and one for the learner rank, and one unmeasured iteration after the measured ones
    (the last iteration of a run has nothing to generate ahead)."""
    import ray

    key = (problems, tiny, measured, dtype, model_name, base_share, attempts, off_policy_steps, split_cores)
    if key not in _MEASURED:
        started = not ray.is_initialized()
        if started:
            ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            _MEASURED[key] = _measure(problems, tiny=tiny, measured=measured, dtype=dtype, model_name=model_name, base_share=base_share,
                                     attempts=attempts, off_policy_steps=off_policy_steps, split_cores=split_cores)
        finally:
            if started:
                ray.shutdown()
    return _MEASURED[key]


def _measure(problems: int, *, tiny: bool, measured: int, dtype: str, model_name: str, base_share: float, attempts: int,
             off_policy_steps: int, split_cores: bool) -> dict[str, Any]:
    from cluster.config import DEFAULT_CONFIG, load_config
    from cluster.model_prep import prepare_model
    from cluster.trainer import ScoreTrainer
    from rewards.tasks import build_task

    warmup = 0 if tiny and not split_cores else 1  # iteration 0 (Stage I) warms up; the measured ones are Stage II
    trailing = 1 if split_cores else 0
    sets = [f"rollout.problems_per_iteration={problems}", "run.progress=false", "run.dashboard=false",
            f"algorithm.stage1_iterations={warmup}", f"algorithm.stage2_iterations={measured + trailing}",
            f"rollout.off_policy_steps={off_policy_steps}",
            f"algorithm.stage2_base_first_attempts={base_share}", f"algorithm.attempts={attempts}", f"model.dtype={dtype}",
            f"model.path={model_name}"]
    if split_cores:
        sets += ["rollout.threads_per_generator=1", "learner.threads_per_rank=1"]
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
            rows, timelines = [], []
            for i in range(warmup + measured + trailing):
                m = trainer.step(i)
                if warmup <= i < warmup + measured:
                    rows.append(m)
                    timelines.append(timeline(m))
        finally:
            trainer.shutdown()
    out = {p: float(np.mean([r[f"seconds_{p}"] for r in rows])) for p in PHASES}
    out["iteration"] = float(np.mean([r["seconds_iteration"] for r in rows]))
    out["generated_tokens"] = float(np.mean([r["generated_tokens"] for r in rows]))
    out["samples"] = problems * cfg.rollout.samples_per_problem
    out["build_seconds"] = build_s
    out["base_fill_seconds"] = fill_s
    out["episodes_per_second"] = out["samples"] / out["iteration"]
    for key in ("rollout", "learner_wait_seconds", "generator_wait_seconds", "overlap_saved_seconds", "staleness"):
        out[key] = float(np.mean([r.get(key, r.get(f"seconds_{key}", 0.0)) for r in rows]))
    out["learner_idle_share"] = out["learner_wait_seconds"] / out["iteration"]
    out["generator_idle_share"] = out["generator_wait_seconds"] / out["iteration"]
    out["timelines"] = timelines
    return out


def timeline(record: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """One iteration's phases as (start, end) seconds from its start, from the times its record holds: the rollout
    the learner waited for, then the update with the rollout ahead beside it, the wait for that rollout, the push."""
    rollout, end = record["seconds_rollout"], record["seconds_iteration"]
    sync_start = end - record["seconds_sync"]
    learn_end = sync_start - (record["learner_wait_seconds"] - rollout)
    learn_start = learn_end - record["seconds_learn"]
    return {"rollout": (0.0, rollout), "learn": (learn_start, learn_end),
            "rollout_ahead": (learn_start, learn_start + record["seconds_rollout_ahead"]), "sync": (sync_start, end)}


def timeline_chart(timeline: dict[str, tuple[float, float]], seconds_per_char: float) -> list[str]:
    """One iteration as two rows of characters: what the generators and the learner did (``#`` working, ``=`` the
    weight push, ``.`` waiting for the other side)."""
    end = timeline["sync"][1]
    width = max(1, round(end / seconds_per_char))
    rows = {"generators": ["."] * width, "learner   ": ["."] * width}
    spans = {"generators": ("rollout", "rollout_ahead"), "learner   ": ("learn",)}
    for side, phases in spans.items():
        for phase in (*phases, "sync"):
            a, b = timeline[phase]
            for c in range(round(a / seconds_per_char), min(width, round(b / seconds_per_char))):
                rows[side][c] = "=" if phase == "sync" else "#"
    return [f"{side} |{''.join(chars)}| {end:.1f} s" for side, chars in rows.items()]


def measure_overlap(problems: int, *, tiny: bool, measured: int, model_name: str = "embedded") -> dict[str, Any]:
    """The same iterations synchronous and overlapped (``rollout.off_policy_steps`` 0 and 1), one core each side."""
    return {mode: measure(problems, tiny=tiny, measured=measured, model_name=model_name, off_policy_steps=steps, split_cores=True)
            for mode, steps in (("synchronous", 0), ("overlap", 1))}


def overlap_bound(sync: dict[str, Any]) -> float:
    """What overlapping can give at most, from the synchronous phase times: the rollout and the update at once,
    the push still after both."""
    return (sync["rollout"] + sync["learn"] + sync["sync"]) / (max(sync["rollout"], sync["learn"]) + sync["sync"])


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
    overlap = overlap_result(tiny=tiny, model_name=model_name, measured=measured, problems=small if tiny else 8)
    result.extra["overlap"] = overlap.extra
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
        *overlap.measurements,
    ]
    lines = [f"{'P':>3} " + " ".join(f"{ph:>9}" for ph in (*PHASES, "iteration"))]
    lines += [f"{p:>3} " + " ".join(f"{points[p][ph]:9.2f}" for ph in (*PHASES, "iteration")) for p in sizes]
    lines.append("fit " + " ".join(f"{fits[ph]['fixed_s']:5.1f}+{fits[ph]['per_problem_s']:.2f}P" for ph in (*PHASES, "iteration")))
    result.extra["breakdown_table"] = "\n".join(lines)
    print(result.extra["breakdown_table"], flush=True)
    print(overlap_report(overlap.extra), flush=True)
    return result


def overlap_report(overlap: dict[str, Any]) -> str:
    """The overlap's figures and one measured iteration of each loop, drawn on one time scale."""
    sync, over = overlap["synchronous"], overlap["overlap"]
    scale = max(sync["iteration"], over["iteration"]) / 60
    lines = [f"overlap at P={overlap['problems']}: {over['episodes_per_second']:.3f} vs {sync['episodes_per_second']:.3f} episodes/s "
             f"({over['episodes_per_second'] / sync['episodes_per_second']:.2f}x; bound {overlap['bound']:.2f}x); idle share "
             f"generators {over['generator_idle_share']:.2f} vs {sync['generator_idle_share']:.2f}, learner "
             f"{over['learner_idle_share']:.2f} vs {sync['learner_idle_share']:.2f}"]
    for mode, m in (("off_policy_steps 0", sync), ("off_policy_steps 1", over)):
        lines += [f"{mode}:"] + ["  " + row for row in timeline_chart(m["timelines"][-1], scale)]
    return "\n".join(lines)


def overlap_result(*, tiny: bool, model_name: str = "embedded", measured: int = 2, problems: int = 8) -> BenchResult:
    """The overlap's part of ``bench iteration`` on its own (``python -c 'from bench.iteration import ...'``): episodes
    per second and each side's busy share with ``rollout.off_policy_steps: 1`` against 0, on the same iterations."""
    both = measure_overlap(problems, tiny=tiny, measured=measured, model_name=model_name)
    sync, over = both["synchronous"], both["overlap"]
    result = BenchResult("iteration_overlap", settings={"problems_per_iteration": problems, "measured_iterations": measured,
                                                         "config": "configs/local_cpu.yaml", "tiny": tiny, "model": model_name,
                                                         "threads": "1 generator + 1 learner"})
    result.extra = {"problems": problems, "bound": overlap_bound(sync), **both}
    result.measurements = [
        Measurement(f"episodes/s at P={problems}, off_policy_steps 1 (1+1 cores)", over["episodes_per_second"], "ep/s",
                    "off_policy_steps 0, same iterations", sync["episodes_per_second"]),
        # busy = 1 - idle share (the idle shares are in the report; an idle share of 0 has no ratio)
        Measurement(f"generator busy share at P={problems}, off_policy_steps 1", 1 - over["generator_idle_share"], "",
                    "off_policy_steps 0", 1 - sync["generator_idle_share"]),
        Measurement(f"learner busy share at P={problems}, off_policy_steps 1", 1 - over["learner_idle_share"], "",
                    "off_policy_steps 0", 1 - sync["learner_idle_share"]),
    ]
    return result
