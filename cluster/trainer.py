"""The SCoRe training loop: Stage I for N1 iterations, then Stage II for N2, on Ray.

Every iteration: draw problems; generate first attempts; generate each later attempt
(``algorithm.attempts``, 2 by default) while the one before it is graded; grade the last; run the learner update; push the new weights to every
generator. The next iteration's batch must carry the new weight version (checked on every batch).
Evaluation runs before training, every ``eval.every_iterations`` and at the end; checkpoints every
``checkpoint.every_iterations``, at each of ``checkpoint.keep_iterations``, at the end, and when the run is
interrupted (Ctrl-C, SIGTERM from ``ray job stop``): the iteration in flight finishes first, so nothing is lost.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray.util.placement_group import placement_group
from tqdm import tqdm

from actors.batch import A1_BASE, check_complete, num_attempts
from actors.fleet import FleetSettings, GenerationError, GeneratorFleet
from cluster.base_attempts import BaseFirstAttempts, base_share
from cluster.checkpoints import CheckpointStore
from cluster.config import ConfigError, ScoreConfig, dump_config, for_dtype
from cluster.evaluate import METRICS, collapse_metrics, evaluate, format_table
from cluster.machines import check_resume, note_start
from cluster.rollout_ahead import RolloutAhead, sampled_version
from cluster.run_log import RunLog, final_attempt_reward, plot_run
from common.devices import bf16_emulated, dtype_choice, resolve_dtype
from common.files import replace_text
from common.teardown import tear_down
from learner.core import LearnerSettings
from learner.group import LearnerGroup
from learner.kl_controller import AdaptiveBeta2
from learner.objectives import informative_groups
from learner.reference import ReferenceGroup
from rewards.pool import GradeRequest, RewardPool
from rewards.sandbox import SandboxLimits
from weight_sync.manager import WeightSync

log = logging.getLogger(__name__)


SPLIT_NAMES = {"eval": "held-out problems", "val": "validation problems"}
RECOVERY_ATTEMPTS = 3  # tries of a rollout or evaluation that lost every generator, and of a failed weight push
COLOCATED_GPU_SHARE = 0.5  # of one GPU, for each of a colocated learner rank and generator (Ray's fractional GPUs)


@dataclass
class RunResult:
    run_dir: Path
    iterations: int
    version: int
    evals: list[dict[str, Any]]
    interrupted: bool = False


def ray_connect(cfg: ScoreConfig) -> str | None:
    """Join ``run.ray_address`` / ``$RAY_ADDRESS`` (a cluster or ``ray job submit``), else start a local Ray.

    Returns the dashboard URL when one is running.
    """
    if ray.is_initialized():
        return None
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        # Under `ray job submit` the job's runtime_env (working_dir, env_vars) already applies; do not replace it.
        ctx = ray.init(address=address, log_to_driver=True)
    else:
        cpus = cfg.run.num_cpus or max(4, os.cpu_count() or 1)
        # address="local": always a new instance, never a stray `ray start` cluster found in /tmp/ray
        ctx = ray.init(address="local", num_cpus=cpus, include_dashboard=cfg.run.dashboard, log_to_driver=False)
    url = getattr(ctx, "dashboard_url", None)
    return f"http://{url}" if url and not url.startswith("http") else url


def cluster_gpus() -> float:
    """The GPUs the connected Ray cluster offers now (its workers, not this driver, do the work)."""
    return ray.cluster_resources().get("GPU", 0)


def required_gpus(cfg: ScoreConfig) -> int:
    """The GPUs a run places: one per learner rank (shared with its generator when colocated), ``tensor_parallel_size``
    per generator, and one per separate reference actor."""
    r, learner = cfg.rollout, cfg.learner
    need = learner.num_ranks + (0 if r.colocate_with_learner else r.num_generators * r.tensor_parallel_size)
    return need + (learner.reference_actors if learner.reference_placement == "separate" else 0)


def use_gpus(cfg: ScoreConfig, poll_s: float = 2.0) -> bool:
    """``run.device``, decided once per job: ``cpu`` builds the CPU stack whatever the cluster has; ``auto`` the GPU
    stack when the cluster has GPUs now; ``gpu`` asks the autoscaler for the GPUs the run needs and waits for them
    up to ``run.gpu_wait_s`` (a job submitted before its GPU workers joined would otherwise build the CPU stack on
    the head and never ask for GPUs). A GPU run on a cluster with fewer GPUs than it places fails at once."""
    device, need = cfg.run.device, required_gpus(cfg)
    if device == "cpu":
        return False
    if device == "gpu":
        from ray.autoscaler.sdk import request_resources

        have = cluster_gpus()
        if have < need:
            request_resources(bundles=[{"GPU": 1}] * need)
            log.info(f"run.device=gpu: waiting up to {cfg.run.gpu_wait_s:.0f} s for {need} GPUs (the cluster has {have:g})")
            deadline = time.monotonic() + cfg.run.gpu_wait_s
            while have < need and time.monotonic() < deadline:
                time.sleep(poll_s)
                have = cluster_gpus()
        if have < need:
            raise ConfigError(f"run.device=gpu: waited {cfg.run.gpu_wait_s:.0f} s for the {need} GPUs this run places "
                              f"(learner ranks, generators x tensor_parallel_size, reference actors); the cluster has {have:g}")
        return True
    have = cluster_gpus()
    if 0 < have < need:
        raise ConfigError(f"this run places {need} GPUs (learner ranks, generators x tensor_parallel_size, reference actors) but the "
                          f"cluster has {have:g}; on an autoscaling cluster set run.device=gpu to wait for them")
    return have > 0


def build_reward_pool(cfg: ScoreConfig):
    """The reward actors, with the configured sandbox limits (training and ``eval`` alike)."""
    r = cfg.rewards
    return RewardPool(num_actors=r.num_actors, max_concurrency=r.max_concurrency, limits=SandboxLimits.from_config(r.sandbox),
                      allow_weak_isolation=r.sandbox.allow_weak_isolation)


def generator_engine_kwargs(cfg: ScoreConfig, gpus: bool, dtype: str) -> dict[str, Any]:
    """The engine settings of ``cfg.rollout`` that every generator passes to :func:`actors.engine.engine_args`."""
    r = cfg.rollout
    engine_kwargs: dict[str, Any] = {"max_model_len": r.max_model_len, "dtype": dtype}
    engine_kwargs.update({"gpu_memory_utilization": r.gpu_memory_utilization} if gpus else {"cpu_kv_cache_gb": r.cpu_kv_cache_gb})
    return engine_kwargs


def build_fleet(cfg: ScoreConfig, model_path: str, gpus: bool, dtype: str, placement_group=None, wait: bool = True):
    """The generator fleet of ``cfg.rollout`` (training and ``eval`` alike); colocated when a placement group is given;
    ``wait=False``: still starting (``GeneratorFleet.wait_started``)."""
    r = cfg.rollout
    return GeneratorFleet(model_path, wait=wait, settings=FleetSettings(
        num_generators=r.num_generators, tensor_parallel_size=r.tensor_parallel_size, gpus=gpus,
        cpus_per_generator=r.cpus_per_generator, cpu_threads=r.threads_per_generator, seed=cfg.run.seed, engine_kwargs=generator_engine_kwargs(cfg, gpus, dtype),
        colocated=placement_group is not None, placement_group=placement_group, gpu_share=COLOCATED_GPU_SHARE,
    ))


def rollout_metrics(grader: str, generated: pa.Table) -> dict[str, float]:
    """Each attempt's reward, the shares of samples whose attempt 2 fixed a wrong attempt 1 or broke a right one,
    and the collapse diagnostic of attempts 1 and 2: over the rows whose attempt 1 the policy wrote, and apart (``base_*``) over the
    rows whose attempt 1 the base model wrote (``algorithm.stage2_base_first_attempts``)."""
    base = generated[A1_BASE].to_pylist() if A1_BASE in generated.column_names else [False] * generated.num_rows
    out: dict[str, float] = {}
    for prefix, want in (("", False), ("base_", True)):
        rows = [i for i, b in enumerate(base) if b == want]
        if not rows:
            continue
        part = generated.take(pa.array(rows, pa.int64()))
        for t in range(1, num_attempts(part) + 1):
            out[f"{prefix}reward_attempt{t}"] = float(np.mean(part[f"r{t}"].to_pylist()))
        r1, r2 = np.asarray(part["r1"].to_pylist()) >= 0.5, np.asarray(part["r2"].to_pylist()) >= 0.5
        out.update({f"{prefix}fixed": float((~r1 & r2).mean()), f"{prefix}broken": float((r1 & ~r2).mean()),
                    **{prefix + k: v for k, v in collapse_metrics(grader, part["a1_text"].to_pylist(), part["a2_text"].to_pylist()).items()}})
    return out


class ScoreTrainer:
    """Owns one run: the generator fleet, the reward pool, the learner group, logs and checkpoints."""

    def __init__(self, cfg: ScoreConfig, model_path: str, run_dir: Path, resume: bool = False, progress: bool | None = None):
        self.cfg, self.model_path, self.run_dir = cfg, model_path, run_dir
        self.resume = resume
        self.progress = cfg.run.progress if progress is None else progress
        self.stop_requested = False
        self.iteration = 0  # completed iterations
        self.version = 0  # weight version the generators hold
        self.fleet = self.pool = self.learner = self.reference = self.weights = None
        self.log: RunLog | None = None
        self.selected: int | None = None  # the iteration whose weights the final evaluation used
        self.shared_pg = None
        alg = cfg.algorithm
        # the adaptive beta2 (learner/kl_controller.py): moved after every Stage I update, checkpointed
        self.beta2 = AdaptiveBeta2(alg.beta2, alg.beta2_target_kl, alg.beta2_kl_gain) if alg.beta2_target_kl is not None else None
        self.base_attempts: BaseFirstAttempts | None = None  # algorithm.stage2_base_first_attempts > 0
        self.ahead: RolloutAhead | None = None  # rollout.off_policy_steps=1: the next iteration's batch, generated during this update

    # -- set-up -----------------------------------------------------------------------------
    def build(self, task, gpus: bool | None = None) -> None:
        """Start every part of the run; ``gpus``: the stack :func:`use_gpus` chose (decided here when not given)."""
        self.task = task
        gpus = use_gpus(self.cfg) if gpus is None else gpus
        self.gpus = gpus
        # one dtype for generators, learner and reference, decided here once (driver and workers share a
        # node in local mode; on a GPU cluster the answer is bf16 whatever the driver's CPU)
        dtype = resolve_dtype(self.cfg.model.dtype, gpu=gpus)
        self.dtype = dtype
        cfg = self.cfg = self._for_dtype(dtype)
        (log.warning if bf16_emulated(cfg.model.dtype, gpu=gpus) else log.info)(dtype_choice(cfg.model.dtype, gpu=gpus))
        if gpus:  # each GPU's bytes before anything is placed: one line for a config that does not fit
            from cluster.memory_plan import ModelShape, check_fits, memory_plan

            check_fits(memory_plan(cfg, ModelShape.of(self.model_path), dtype))
        log.info(f"starting {cfg.rewards.num_actors} reward actor(s), {cfg.rollout.num_generators} generator(s), {cfg.learner.num_ranks} learner rank(s) ({'GPU' if gpus else 'CPU'})")
        colocated = cfg.rollout.colocate_with_learner
        self.shared_pg = self._colocated_placement(gpus) if colocated else None
        # the generators' engines start while the reward actors and the learner ranks (and a separate reference) start
        # and load the model, each in its own processes; colocated generators start first, alone, because vLLM sizes
        # its cache from the device's free memory
        self.fleet = build_fleet(cfg, self.model_path, gpus, dtype, placement_group=self.shared_pg, wait=colocated)
        self.pool = build_reward_pool(cfg)
        settings = LearnerSettings.from_config(cfg, self.model_path, dtype)
        self.reference = None
        if cfg.learner.reference_placement == "separate":
            self.reference = ReferenceGroup(self.model_path, cfg.learner.reference_actors, gpus=gpus, cpus=cfg.learner.cpus_per_rank,
                                            timeout_s=600,
                                            dtype=dtype, temperature1=settings.temperature1, temperature2=settings.temperature2,
                                            threads=cfg.learner.threads_per_rank, chunk_positions=cfg.learner.logprob_chunk_positions)
        self.learner = LearnerGroup(settings, cfg.learner.num_ranks, gpus=gpus, cpus_per_rank=cfg.learner.cpus_per_rank,
                                    pg=self.shared_pg, gpu_share=COLOCATED_GPU_SHARE if colocated else 1.0)
        self.fleet.wait_started()
        self.weights = WeightSync(self.learner, self.fleet, cfg.rollout.sync_bucket_mb << 20, load=cfg.rollout.sync_load)
        self.log = RunLog(self.run_dir, cfg.run)
        self.store = CheckpointStore(self.run_dir, cfg.checkpoint.keep, cfg.checkpoint.keep_iterations)

    def _for_dtype(self, dtype: str) -> ScoreConfig:
        """The config as it runs in ``dtype`` (``run.float32_overrides``), saying what that changed."""
        if dtype == "float32" and self.cfg.run.float32_overrides:
            log.info(f"computing in float32: applying run.float32_overrides {', '.join(self.cfg.run.float32_overrides)}")
        return for_dtype(self.cfg, dtype)

    def _colocated_placement(self, gpus: bool):
        """One bundle per learner rank, shared by that rank and its generator (one GPU, or both CPU shares)."""
        cfg = self.cfg
        bundle = {"GPU": 1, "CPU": 2} if gpus else {"CPU": cfg.learner.cpus_per_rank + cfg.rollout.cpus_per_generator}
        pg = placement_group([dict(bundle) for _ in range(cfg.learner.num_ranks)], strategy="PACK")
        try:
            ray.get(pg.ready(), timeout=600)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(pg)
            raise RuntimeError(f"could not place {cfg.learner.num_ranks} colocated learner+generator bundles of {bundle}: not enough free resources") from None
        return pg

    def shutdown(self) -> None:
        if self.log is not None:
            self.log.close()
        for part in (self.weights, self.learner, self.reference, self.fleet, self.pool):
            if part is not None:
                try:
                    part.shutdown()
                except Exception:  # noqa: BLE001 - best effort on the way out
                    pass
        if self.shared_pg is not None:
            tear_down([], self.shared_pg)
            self.shared_pg = None

    # -- data ---------------------------------------------------------------------------------
    def draw(self, iteration: int, round_: int = 0):
        """The problems of one iteration: a seeded permutation per epoch, so resume sees the same order.

        Rounds after the first (``rollout.skip_zero_variance_groups``) draw a seeded sample of their own.
        """
        train = self.task.problems("train")
        P, n = self.cfg.rollout.problems_per_iteration, len(train)
        if round_:
            return random.Random(f"{self.cfg.run.seed}-{iteration}-{round_}").sample(train, min(P, n))
        perms: dict[int, list[int]] = {}
        out = []
        for q in range(iteration * P, (iteration + 1) * P):
            epoch = q // n
            if epoch not in perms:
                perm = list(range(n))
                random.Random(self.cfg.run.seed * 1_000_003 + epoch).shuffle(perm)
                perms[epoch] = perm
            out.append(train[perms[epoch][q % n]])
        return out

    def _grade(self, texts: list[str], golds: list[str]) -> list[float]:
        return [g.reward for g in self.pool.grade([GradeRequest(self.task.grader, t, gd) for t, gd in zip(texts, golds)])]

    def stage_of(self, iteration: int) -> int:
        return 1 if iteration < self.cfg.algorithm.stage1_iterations else 2

    def _base_first_attempts(self) -> BaseFirstAttempts:
        """Stage II's base-model first attempts (cluster/base_attempts.py): read on resume, else sampled now,
        while the generators still hold the base weights."""
        cfg, alg = self.cfg, self.cfg.algorithm
        m = base_share(alg.stage2_base_first_attempts, cfg.rollout.problems_per_iteration)
        total = alg.stage1_iterations + alg.stage2_iterations
        cache = BaseFirstAttempts(self.run_dir, {it: [p.uid for p in self.draw(it)[:m]] for it in range(alg.stage1_iterations, total)})
        if self.resume and cache.load():
            return cache
        train = {p.uid: p for p in self.task.problems("train")}
        sampling = {**cfg.rollout.attempt1.model_dump(), "seed": cfg.run.seed * 1_000_003 - 1}
        self._with_generator_recovery(lambda: cache.fill(self.fleet, self.task.first_turn, train, cfg.rollout.samples_per_problem, sampling),
                                      "the base model's first attempts for Stage II")
        log.info(f"sampled {cache.table.num_rows} base-model first attempts for {alg.stage2_iterations} Stage II iterations "
                 f"in {cache.seconds:.1f} s ({m} of {cfg.rollout.problems_per_iteration} problems each)")
        return cache

    # -- one iteration ------------------------------------------------------------------------
    def _rollout(self, problems, seed: int, base: pa.Table | None = None) -> tuple[pa.Table, float, float]:
        """Every attempt (``algorithm.attempts``) for ``problems`` (k samples each), graded: the table and seconds
        generating and grading. Each attempt is graded while the next one is generated.

        ``base``: the base model's first attempts (k rows each) for the first ``base.num_rows / k`` problems;
        the current policy writes attempt 1 for the rest and attempt 2 for all. Column ``a1_base`` marks them.
        """
        cfg = self.cfg
        k, P, n = cfg.rollout.samples_per_problem, len(problems), cfg.algorithm.attempts
        m = base.num_rows // k if base is not None else 0
        if base is not None and base["uid"].to_pylist()[::k] != [p.uid for p in problems[:m]]:
            raise RuntimeError("the cached base first attempts are not this iteration's first problems")
        items = [{"uid": p.uid, "problem_index": i, "messages": self.task.first_turn(p)} for i, p in enumerate(problems) if i >= m]
        t0 = time.monotonic()
        parts = [self.fleet.first_attempts(items, k, {**cfg.rollout.attempt1.model_dump(), "seed": seed})] if items else []
        if m:
            parts.insert(0, base.set_column(base.schema.get_field_index("problem_index"), "problem_index",
                                            pa.array([i // k for i in range(base.num_rows)], pa.int32())))
        first = pa.concat_tables(parts)
        golds1 = [problems[i].gold for i in first["problem_index"].to_pylist()]
        batch, rewards = first, []
        with ThreadPoolExecutor(1) as ex:  # grade attempt t-1 while attempt t is generated
            for t in range(2, n + 1):
                graded = ex.submit(self._grade, batch[f"a{t - 1}_text"].to_pylist(), golds1)
                # attempt 2's seed is seed + 1 (as with two attempts); later ones follow at seed + t - 1
                batch = self.fleet.later_attempts(batch, t, self.task.instruction, {**cfg.rollout.attempt2.model_dump(), "seed": seed + t - 1})
                rewards.append(graded.result())
                if batch["uid"].to_pylist() != first["uid"].to_pylist():
                    raise RuntimeError(f"attempt-{t} rows came back in another order than attempt 1")
            t_gen = time.monotonic()
        # every later attempt, and attempt 1 of the policy's rows, was generated with the newest weights; base rows
        # keep the base model's version 0
        check_complete(batch.drop_columns(["a1_version"]), P, k, self.fleet.version)
        is_base = [i < m for i in batch["problem_index"].to_pylist()]
        assert batch["a1_version"].to_pylist() == [0 if b else self.version for b in is_base]
        rewards.append(self._grade(batch[f"a{n}_text"].to_pylist(), golds1))
        for t, r in enumerate(rewards, 1):
            batch = batch.append_column(f"r{t}", pa.array(r, pa.float32()))
        return batch.append_column(A1_BASE, pa.array(is_base, pa.bool_())), t_gen - t0, time.monotonic() - t_gen

    def collect(self, iteration: int, stage: int) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
        """The learner's batch of P problem groups, everything generated for it, and what that took.

        With ``rollout.skip_zero_variance_groups`` groups in which no attempt's task return varies are
        set aside and more problems drawn, for at most ``rollout.max_sampling_rounds`` rounds; a batch
        still short then is filled with set-aside groups, so every update sees P x k rows.
        """
        cfg, alg = self.cfg, self.cfg.algorithm
        k, P = cfg.rollout.samples_per_problem, cfg.rollout.problems_per_iteration
        rounds = cfg.rollout.max_sampling_rounds if cfg.rollout.skip_zero_variance_groups else 1
        seed = cfg.run.seed * 1_000_003 + 2 * iteration  # per-iteration sampling seeds: resume reproduces the batch
        tables, chosen, spare = [], [], []  # chosen/spare: (round, group) pairs
        seconds = {"generate": 0.0, "grade": 0.0}
        uninformative = 0
        for rnd in range(rounds):
            base = self.base_attempts.rows(iteration) if self.base_attempts is not None and stage == 2 and rnd == 0 else None
            table, t_gen, t_grade = self._rollout(self.draw(iteration, rnd), seed + 10_000_019 * rnd, base)
            seconds["generate"] += t_gen
            seconds["grade"] += t_grade
            tables.append(table.append_column("round", pa.array([rnd] * table.num_rows, pa.int32())))
            flags = informative_groups(stage, [torch.tensor(table[f"r{t}"].to_pylist()) for t in range(1, alg.attempts + 1)], alg.alpha, alg.gamma, k,
                                       attempt1_context=table[A1_BASE].to_pylist()[::k])
            uninformative += flags.count(False)
            for g, useful in enumerate(flags):
                (chosen if useful or rounds == 1 else spare).append((rnd, g))
            if len(chosen) >= P:
                break
        chosen = (chosen + spare)[:P]
        rows = [(rnd, g * k + j) for rnd, g in chosen for j in range(k)]
        parts = [tables[rnd].take(pa.array([i for r, i in rows if r == rnd], pa.int64())) for rnd in range(len(tables))]  # groups stay contiguous
        batch = pa.concat_tables(parts).drop_columns(["round"])
        batch = batch.set_column(batch.column_names.index("problem_index"), "problem_index", pa.array([i // k for i in range(batch.num_rows)], pa.int32()))
        generated = pa.concat_tables(tables)
        groups = generated.num_rows // k  # a later round may draw fewer than P problems from a small training set
        stats = {"sampling_rounds": len(tables), "groups_generated": groups, "zero_variance_groups": uninformative / groups,
                 "episodes_trained": batch.num_rows, "seconds_generate": seconds["generate"], "seconds_grade": seconds["grade"]}
        return batch, generated, stats

    def step(self, iteration: int) -> dict[str, Any]:
        """One iteration. Its phases fail apart: a rollout that loses every generator is redone (with the weights
        re-synced as the current version); once the update has returned, only the push of the new version is
        retried, so no iteration updates twice and versions only grow.

        ``rollout.off_policy_steps: 1``: while the learner updates on this batch, the generators sample the next
        iteration's with the weights they hold (cluster/rollout_ahead.py). The push of the new weights waits for
        both, so a batch never mixes versions, and the next batch is one version behind the learner that trains it.
        A rollout ahead that loses every generator is dropped and generated after the push (then 0 behind)."""
        stage = self.stage_of(iteration)
        t0 = time.monotonic()
        ahead, self.ahead = self.ahead, None
        if ahead is not None and ahead.iteration != iteration:
            raise RuntimeError(f"the batch generated ahead is iteration {ahead.iteration + 1}'s, not iteration {iteration + 1}'s")
        if ahead is None:
            batch, generated, stats = self._with_generator_recovery(lambda: self.collect(iteration, stage), f"iteration {iteration + 1}'s rollout")
        else:
            batch, generated, stats = ahead.batch, ahead.generated, ahead.stats
        t_rollout = time.monotonic()
        staleness = self._check_staleness(batch, iteration)
        self._write_samples(generated, "train", iteration + 1)
        if self.reference is not None:
            batch = self.reference.score(batch)
        self.fleet.sleep()  # colocated on a GPU: hand the generators' memory to the learner (no-op otherwise)
        beta2 = self.beta2.value if self.beta2 is not None else None
        alg = self.cfg.algorithm
        overlap = self.cfg.rollout.off_policy_steps > 0 and iteration + 1 < alg.stage1_iterations + alg.stage2_iterations
        ex = ThreadPoolExecutor(1, thread_name_prefix="rollout-ahead")
        try:
            t_learn0 = time.monotonic()
            generating = ex.submit(self._generate_ahead, iteration + 1) if overlap else None
            learn = self.learner.update(batch, stage, beta2 if stage == 1 else None)
            t_learn = time.monotonic()
            self.ahead, seconds_ahead = generating.result() if generating is not None else (None, 0.0)
        finally:
            # a failed update or a second Ctrl-C does not wait for the rollout ahead: the trainer's shutdown stops
            # the generators, and the rollout ends with them
            ex.shutdown(wait=False, cancel_futures=True)
        t_waited = time.monotonic()
        if self.beta2 is not None and stage == 1:
            self.beta2.update(learn["kl_attempt1"])
        sync = self._publish(self.version + 1)
        self.version = sync["version"]
        if self.cfg.learner.offload_states_during_generation:  # until the next update reloads them
            self.learner.offload_states()
        t_sync = time.monotonic()
        gen_tokens = sum(sum(generated[f"a{t}_length"].to_pylist()) for t in range(1, self.cfg.algorithm.attempts + 1))
        seconds_learn = t_learn - t_learn0
        return {
            "iteration": iteration + 1, "stage": stage, "version": self.version,
            # the policy's rewards: over everything generated this iteration, set-aside groups included
            **rollout_metrics(self.task.grader, generated),
            **{k_: v for k_, v in learn.items() if not k_.startswith("reward_attempt") and k_ != "seconds"},
            **stats,
            **({"beta2": beta2} if beta2 is not None else {}),  # the weight this iteration's update used
            "generated_tokens": gen_tokens, "generation_tokens_per_second": gen_tokens / max(stats["seconds_generate"], 1e-9),
            "seconds_rollout": t_rollout - t0, "seconds_learn": seconds_learn, "seconds_sync": t_sync - t_waited,
            "seconds_iteration": t_sync - t0, "sync_bytes": sync["bytes"], "fleet_events": len(self.fleet.events),
            # the overlap: the learner's version minus the batch's, the time each side sat waiting for the other (the
            # generators during the update, the learner for the rollout), and the time both worked at once
            "staleness": staleness, "seconds_rollout_ahead": seconds_ahead,
            "learner_wait_seconds": (t_rollout - t0) + (t_waited - t_learn),
            "generator_wait_seconds": max(0.0, seconds_learn - seconds_ahead),
            "overlap_saved_seconds": min(seconds_learn, seconds_ahead),
        }

    def _generate_ahead(self, iteration: int) -> tuple[RolloutAhead | None, float]:
        """Iteration ``iteration``'s rollout with the generators' weights, during the update before it, and its
        seconds. No re-sync here on losing every generator: the learner is mid-update, so its weights are not yet
        a version; the caller generates the batch again after the push."""
        t0 = time.monotonic()
        try:
            batch, generated, stats = self.collect(iteration, self.stage_of(iteration))
        except GenerationError as err:
            log.warning(f"iteration {iteration + 1}'s rollout, generated during iteration {iteration}'s update: {err}; "
                        "it is generated again once the update is pushed")
            return None, time.monotonic() - t0
        return RolloutAhead(iteration, batch, generated, stats), time.monotonic() - t0

    def _check_staleness(self, batch: pa.Table, iteration: int) -> int:
        """The learner's weight version minus the oldest that sampled ``batch``; more than ``rollout.off_policy_steps``
        (or a batch from the future) is a bug in the loop, never trained on."""
        sampled, allowed = sampled_version(batch), self.cfg.rollout.off_policy_steps
        lag = self.version - sampled
        if not 0 <= lag <= allowed:
            raise RuntimeError(f"iteration {iteration + 1}'s batch was sampled with weight version {sampled}, {lag} behind the learner's "
                               f"version {self.version}; rollout.off_policy_steps={allowed} allows 0 to {allowed}")
        return lag

    # -- evaluation and state -------------------------------------------------------------------
    def run_eval(self, label: str, periodic: bool = False) -> dict[str, Any]:
        """Evaluate the generators' current weights. Before and after training: ``eval.num_problems`` problems of
        ``eval.split`` (the held-out ones by default), ``eval.attempts`` attempts. Periodic (during training):
        ``eval.periodic_problems`` problems of the validation split (held-out ones when there is none), two attempts."""
        e = self.cfg.eval
        split = "val" if (periodic or e.split == "val") and self.task.problems("val") else "eval"
        problems = self.task.problems(split)[: e.periodic_problems if periodic else e.num_problems]
        attempts = 2 if periodic else e.attempts
        t0 = time.monotonic()
        metrics, batch = self._with_generator_recovery(
            lambda: evaluate(self.fleet, self.pool, self.task, problems, temperature=e.temperature, max_tokens=e.max_tokens, attempts=attempts),
            f"evaluation '{label}'")
        record = {"label": label, "split": split, "iteration": self.iteration, "version": self.version, **metrics, "seconds": time.monotonic() - t0}
        if self.selected is not None and not periodic:
            record["selected_iteration"] = self.selected
        if split == "val" and not periodic:  # eval.split=val: apart from the periodic evaluation of the same iteration
            record["samples_split"] = f"val_{label}"
        self.log.write("eval", self.iteration, record)
        self._write_samples(batch, record.get("samples_split", split), self.iteration)
        return record

    # -- checkpoint selection ------------------------------------------------------------------
    def consider_best(self) -> None:
        """``checkpoint.select=best_train_reward``: at the end of every window of ``select_window`` iterations,
        keep the weights if the window's mean final-attempt training reward is the highest so far."""
        c = self.cfg.checkpoint
        if c.select != "best_train_reward" or self.iteration % c.select_window:
            return
        window = [final_attempt_reward(r) for r in self.log.records() if r["kind"] == "train" and self.iteration - c.select_window < r["step"] <= self.iteration]
        score = sum(window) / len(window)
        best = self.store.best()
        if best is not None and best.iteration < self.iteration and score <= best.manifest["train_reward"]:
            return
        tmp = self.store.begin(None)
        manifest = {"iteration": self.iteration, "version": self.version, "train_reward": score, "window": c.select_window, "dtype": self.dtype,
                    "time": time.time()}
        self.learner.save(str(tmp), manifest)
        self.store.commit(tmp, manifest)
        log.info(f"checkpoint.select: iterations {self.iteration - c.select_window + 1}-{self.iteration} have the best training reward so far ({score:.3f})")

    def load_selected(self) -> None:
        """Put the selected weights (checkpoint.select) into the learner and the generators before the final evaluation."""
        best = self.store.best() if self.cfg.checkpoint.select == "best_train_reward" else None
        self.selected = self.iteration if best is None else best.iteration
        if best is None or best.iteration == self.iteration:
            return
        self.learner.load(str(best.path))
        self.version = self._sync(self.version + 1)["version"]
        log.info(f"checkpoint.select: evaluating and exporting iteration {best.iteration} (mean training reward {best.manifest['train_reward']:.3f}), not {self.iteration}")

    def _samples_path(self, split: str, iteration: int) -> Path:
        """``samples/<split>_iter<iteration>.parquet``: a training iteration's rollout or an evaluation's batch."""
        return self.run_dir / "samples" / f"{split}_iter{iteration:06d}.parquet"

    def _write_samples(self, batch: pa.Table, split: str, iteration: int) -> None:
        """Keep a rollout (texts, token ids, log-probs, rewards) under ``samples/`` for inspection."""
        path = self._samples_path(split, iteration)
        path.parent.mkdir(exist_ok=True)
        pq.write_table(batch, path)

    def checkpoint(self) -> Path:
        tmp = self.store.begin(self.iteration)
        manifest = {"iteration": self.iteration, "stage": self.stage_of(max(0, self.iteration - 1)), "version": self.version,
                    "seed": self.cfg.run.seed, "dtype": self.dtype, "time": time.time()}
        if self.beta2 is not None:
            manifest["beta2_controller"] = self.beta2.state()
        self.learner.save(str(tmp), manifest)
        if self.ahead is not None:  # sampled with the version before the checkpoint's: kept, not regenerated on resume
            self.ahead.save(tmp)
        return self.store.commit(tmp, manifest)

    def restore(self) -> None:
        ckpt, problems = self.store.latest()
        for p in problems:
            log.info(f"checkpoint {p}")
        if ckpt is None:
            raise ConfigError(f"--resume: no complete checkpoint under {self.store.root}")
        self.learner.load(str(ckpt.path))
        self.iteration = ckpt.iteration
        if self.beta2 is not None:
            state = ckpt.manifest.get("beta2_controller")
            if state is None:
                log.warning(f"{ckpt.path.name} holds no adaptive beta2 state (written without algorithm.beta2_target_kl): "
                            f"beta2 restarts from {self.beta2.value}")
            else:
                self.beta2 = AdaptiveBeta2.from_state({**state, "target_kl": self.beta2.target_kl, "gain": self.beta2.gain})
        self.log.truncate_after(self.iteration)
        best = self.store.best()
        if best is not None and best.iteration > self.iteration:  # chosen among iterations that will be redone
            shutil.rmtree(best.path)
        version = int(ckpt.manifest["version"])
        self._sync(version)
        self.version = version
        self.ahead = RolloutAhead.load(ckpt.path)
        if self.ahead is not None and (self.cfg.rollout.off_policy_steps == 0 or self.ahead.iteration != self.iteration):
            log.info(f"{ckpt.path.name} holds iteration {self.ahead.iteration + 1}'s batch generated ahead; not used "
                     f"(rollout.off_policy_steps={self.cfg.rollout.off_policy_steps}): the batch is generated again")
            self.ahead = None
        log.info(f"resumed from {ckpt.path.name}: iteration {self.iteration}, stage {self.stage_of(self.iteration)}, weight version {version}")

    # -- the run ------------------------------------------------------------------------------
    def _install_signals(self) -> None:
        def request_stop(signum, _frame):
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_requested = True
            log.warning("%s: finishing this iteration, then writing a checkpoint (Ctrl-C again to abort)", signal.Signals(signum).name)

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                signal.signal(sig, request_stop)
            except ValueError:  # not the main thread
                pass

    def run(self, task) -> RunResult:
        gpus = use_gpus(self.cfg)  # once per job (run.device may wait for the autoscaler)
        cfg = self.cfg = self._for_dtype(resolve_dtype(self.cfg.model.dtype, gpu=gpus))
        total = cfg.algorithm.stage1_iterations + cfg.algorithm.stage2_iterations
        if self.resume:  # before minutes of start-up: a checkpoint from a machine that computed in another dtype
            latest, _ = CheckpointStore(self.run_dir).latest()
            if latest is not None:
                check_resume(latest.path.name, latest.manifest.get("dtype"), resolve_dtype(cfg.model.dtype, gpu=gpus),
                             dtype_choice(cfg.model.dtype, gpu=gpus))
        self.build(task, gpus)
        (self.run_dir / "config.yaml").write_text(dump_config(cfg))
        self._install_signals()
        if self.resume:
            self.restore()
        # the trackers open (or continue) their runs before the first record, the base evaluation's
        self.log.start(json.loads(cfg.model_dump_json()), note_start(self.run_dir, self.iteration, self.dtype))
        if not self.resume and cfg.eval.before:
            log.info(f"evaluating the base model prompted to self-correct on "
                     f"{min(cfg.eval.num_problems, len(task.problems(cfg.eval.split)))} {SPLIT_NAMES[cfg.eval.split]}")
            self._report(self.run_eval("base"))
        if cfg.algorithm.stage2_base_first_attempts > 0:
            self.base_attempts = self._base_first_attempts()
        bar = tqdm(total=total, initial=self.iteration, desc="SCoRe", unit="it", disable=not self.progress, dynamic_ncols=True)
        interrupted = False
        while self.iteration < total:
            if self.stop_requested:
                interrupted = True
                break
            bar.set_description(f"SCoRe stage {'I' if self.stage_of(self.iteration) == 1 else 'II'}")
            metrics = self.step(self.iteration)
            self.iteration += 1
            self.log.write("train", self.iteration, metrics)
            bar.set_postfix(r1=f"{metrics.get('reward_attempt1', metrics.get('base_reward_attempt1')):.2f}",
                            r2=f"{final_attempt_reward(metrics):.2f}", v=self.version)
            bar.update(1)
            self.consider_best()
            if cfg.eval.every_iterations and self.iteration % cfg.eval.every_iterations == 0:
                self._report(self.run_eval(f"iteration {self.iteration}", periodic=True))
            every, kept = cfg.checkpoint.every_iterations, cfg.checkpoint.keep_iterations
            if self.iteration < total and ((every and self.iteration % every == 0) or self.iteration in kept):
                self.checkpoint()  # an iteration asked to be kept is written too, on or off the every_iterations grid
        bar.close()
        path = self.checkpoint()
        if interrupted or self.stop_requested:
            log.info(f"stopped after iteration {self.iteration}; checkpoint {path}; continue with --resume")
            return RunResult(self.run_dir, self.iteration, self.version, self._evals(), interrupted=True)
        self.load_selected()
        self._report(self.run_eval("final"))
        exported = self.learner.export_hf(str(self.run_dir / "hf_model"))
        evals = self._evals()
        self._write_evals(evals)
        plot = plot_run(self.log.records(), self.run_dir / "plot.png")
        rows = [(e["label"], e) for e in evals if e["label"] in ("base", "final")]
        samples = [self._samples_path(e.get("samples_split", e["split"]), e["iteration"]) for e in evals if e["label"] in ("base", "final")]
        self.log.finish(format_table(rows), [f"run directory: {self.run_dir}", f"plot: {plot}", f"Hugging Face model: {exported}"],
                        plot, [p for p in samples if p.exists()])
        return RunResult(self.run_dir, self.iteration, self.version, evals)

    @staticmethod
    def _retrying(work, before_retry):
        """Run ``work`` up to RECOVERY_ATTEMPTS times while it raises :class:`GenerationError`, calling
        ``before_retry(err)`` between tries; the last failure propagates."""
        for attempt in range(RECOVERY_ATTEMPTS):
            try:
                return work()
            except GenerationError as err:
                if attempt == RECOVERY_ATTEMPTS - 1:
                    raise
                before_retry(err)
        raise AssertionError("unreachable")

    def _with_generator_recovery(self, work, what: str):
        """Run ``work``, which reads the generators but changes no weights (a rollout, an evaluation); if every
        generator died, bring the restarted ones to the current weights and retry."""
        def resync(err: GenerationError) -> None:
            log.info(f"{what}: {err}; re-syncing weight version {self.version} to restarted generators and retrying")
            self._sync(self.version)

        return self._retrying(work, resync)

    def _publish(self, version: int) -> dict[str, Any]:
        """Push the weights of an update that has happened as ``version``: only this push is retried (each try is
        itself :meth:`WeightSync.push`'s rebuilds and retries), never the update."""
        return self._retrying(lambda: self._sync(version), lambda err: log.warning(
            f"publishing weight version {version}: {err}; retrying the push (the update is kept)"))

    def _sync(self, version: int) -> dict[str, Any]:
        """Publish the learner's weights as ``version`` (the manager rebuilds and retries when a generator dies)."""
        return self.weights.push(version)

    def _report(self, record: dict[str, Any]) -> None:
        extra = [m for m in record if m.startswith("accuracy_t") and m not in METRICS] + ["answer_changed"]
        log.info(f"eval [{record['label']}] on {SPLIT_NAMES[record['split']]}: " + "  ".join(f"{m}={record[m]:+.3f}" if m.startswith("delta") else f"{m}={record[m]:.3f}" for m in [*METRICS, *extra])
                  + f"  (n={record['num_problems']}, {record['seconds']:.0f} s)")

    def _evals(self) -> list[dict[str, Any]]:
        return [r for r in self.log.records() if r["kind"] == "eval"]

    def _write_evals(self, evals: list[dict[str, Any]]) -> None:
        replace_text(self.run_dir / "eval.json", json.dumps(evals, indent=1))
        keys = ["label", "split", "iteration", "version", *METRICS, "answer_changed", "text_identical", "num_problems"]
        with (self.run_dir / "eval.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(evals)
