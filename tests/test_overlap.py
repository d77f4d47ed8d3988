"""``rollout.off_policy_steps: 1`` on the real stack (Ray, vLLM-CPU generators, the reward pool, a DeepSpeed learner):
the next iteration's batch is generated while the learner trains, every batch is at most one version behind,
the truncated importance weight is on, a stopped run resumes to the uninterrupted one, and a rollout ahead
that loses its generator is generated again after the push.

The tiny random model of the embedded architecture (tests/tiny_models.py): what is tested is the loop's
mechanics (versions, what a checkpoint holds, recovery), not what the model learns; tests.test_training.MOVING
makes each of its weight versions sample other tokens, so that a batch sampled with the wrong version shows.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_training import EXPERIMENT, MOVING, _train_records, _trainer, install_push_faults

# float32: the truncated importance weight is on because of the lag alone (in bf16 it is on anyway)
OVERLAP = ["rollout.off_policy_steps=1", "eval.before=false", "model.dtype=float32", *MOVING]
COMPARED = ("loss", "pg_loss", "kl_attempt1", "kl_attempt2", "beta2", "generated_tokens", "sampling_rounds", "mismatch_mean_abs_attempt2",
            "is_weight_mean_attempt2", "staleness")


def _versions(run_dir, iteration):
    """The weight versions that sampled iteration ``iteration``'s policy attempts (base-model rows excluded)."""
    table = pq.read_table(run_dir / "samples" / f"train_iter{iteration:06d}.parquet").to_pylist()
    return {row["a2_version"] for row in table} | {row["a1_version"] for row in table if not row["a1_base"]}


def _tokens(run_dir, iteration):
    return pq.read_table(run_dir / "samples" / f"train_iter{iteration:06d}.parquet").column("a2_response_ids").to_pylist()


@pytest.fixture(scope="module")
def overlapped(ray_local, tiny_model_path, tmp_path_factory):
    """Four iterations with the overlap and what the experiment uses (dynamic sampling, periodic evaluations,
    checkpoint selection, base-model first attempts in Stage II, adaptive beta2), uninterrupted; the final
    evaluation on the validation split, as a pilot run's (issue #34)."""
    tmp = tmp_path_factory.mktemp("overlap")
    trainer, task = _trainer(tmp, "overlap", tiny_model_path, [*EXPERIMENT, *OVERLAP, "eval.split=val"])
    try:
        result = trainer.run(task)
    finally:
        trainer.shutdown()
    return result


def test_each_batch_is_sampled_during_the_update_before_it_one_version_behind(overlapped):
    result = overlapped
    records = _train_records(result.run_dir)
    assert [r["iteration"] for r in records] == [1, 2, 3, 4] and [r["stage"] for r in records] == [1, 1, 2, 2]
    assert [r["version"] for r in records] == [1, 2, 3, 4]
    # the first batch waits for its rollout; each later one was generated with the version before the learner's
    assert [r["staleness"] for r in records] == [0, 1, 1, 1]
    assert [_versions(result.run_dir, it) for it in (1, 2, 3, 4)] == [{0}, {0}, {1}, {2}]
    assert all(r["kl_attempt1"] > 0 for r in records[1:])  # the weights moved: each version is another policy
    for r in records:
        assert "is_weight_mean_attempt2" in r and 0 < r["is_weight_mean_attempt2"] <= 2.0  # on with the lag, even in float32
        assert r["learner_wait_seconds"] >= 0 and r["generator_wait_seconds"] >= 0
    # the rollout of iterations 2-4 ran during the update before it, not before the learner could start
    assert records[0]["seconds_rollout"] > 0 and records[0]["seconds_rollout_ahead"] > 0
    for before, r in zip(records, records[1:]):
        assert r["seconds_rollout"] < 0.1 * before["seconds_rollout_ahead"]
        assert before["overlap_saved_seconds"] > 0
    assert records[-1]["seconds_rollout_ahead"] == 0 and records[-1]["overlap_saved_seconds"] == 0  # nothing after the last
    # the periodic evaluations (every 2 iterations) and the final one ran on the pushed weights
    evals = [r for r in result.evals]
    assert [(e["label"], e["version"]) for e in evals] == [("iteration 2", 2), ("iteration 4", 4), ("final", evals[-1]["version"])]
    # eval.split=val: the final evaluation read validation problems only, and kept its samples apart from the
    # periodic evaluation of the same iteration; no held-out problem was evaluated
    assert [e["split"] for e in evals] == ["val"] * 3 and evals[-1]["num_problems"] == 4
    samples = result.run_dir / "samples"
    assert (samples / "val_iter000004.parquet").exists() and (samples / "val_final_iter000004.parquet").exists()
    assert not list(samples.glob("eval_*"))
    assert not (result.run_dir / "checkpoints" / "iter_000004" / "rollout_ahead").exists()  # nothing in flight at the end


def test_a_stopped_overlapped_run_resumes_to_the_uninterrupted_one(overlapped, ray_local, tiny_model_path, tmp_path):
    """Stopped after iteration 2 (what SIGINT / SIGTERM do), the checkpoint holds iteration 3's batch, generated with
    version 1 during iteration 2's update; the resumed run trains that batch, not one regenerated with version 2."""
    expected = _train_records(overlapped.run_dir)
    first, task = _trainer(tmp_path, "resumed", tiny_model_path, [*EXPERIMENT, *OVERLAP, "eval.split=val"])
    original_step = first.step

    def step_then_stop(iteration):
        out = original_step(iteration)
        first.stop_requested = iteration == 1
        return out

    first.step = step_then_stop
    try:
        stopped = first.run(task)
    finally:
        first.shutdown()
    assert stopped.interrupted and stopped.iterations == 2
    assert (tmp_path / "resumed" / "checkpoints" / "iter_000002" / "rollout_ahead" / "batch.parquet").exists()
    second, task = _trainer(tmp_path, "resumed", tiny_model_path, [*EXPERIMENT, *OVERLAP, "eval.split=val"], resume=True)
    try:
        finished = second.run(task)
    finally:
        second.shutdown()
    assert finished.iterations == 4 and not finished.interrupted
    got = _train_records(tmp_path / "resumed")
    assert [r["iteration"] for r in got] == [1, 2, 3, 4]
    for it in (3, 4):
        assert _tokens(tmp_path / "resumed", it) == _tokens(overlapped.run_dir, it), it
        for key in COMPARED:
            assert got[it - 1][key] == expected[it - 1][key], (it, key)


def test_generator_deaths_during_a_rollout_ahead_and_during_a_push_are_recovered(ray_local, tiny_model_path, tmp_path):
    """The only generator is killed while it generates iteration 2's batch during iteration 1's update (Ray
    restarts it with the initial weights). That batch is dropped and generated once version 1 is pushed: it
    trains 0 versions behind, on version 1's tokens. Then iteration 2's push loses the generator on every attempt
    WeightSync makes: the push of version 2 alone is retried, and iteration 3's batch, generated during
    iteration 2's update, is still trained one version behind. One update per iteration throughout."""
    trainer, task = _trainer(tmp_path, "ahead-fault", tiny_model_path, [*OVERLAP, "algorithm.stage1_iterations=1",
                                                                        "algorithm.stage2_iterations=2"])
    generate_ahead, build, step = trainer._generate_ahead, trainer.build, trainer.step
    ahead = {"iteration": None}
    attempted, kills = [], {"left": 0}

    def generating_ahead(iteration):
        ahead["iteration"] = iteration
        try:
            return generate_ahead(iteration)
        finally:
            ahead["iteration"] = None

    def build_with_faults(task_, gpus=None):
        build(task_, gpus)
        install_push_faults(trainer, attempted, kills)
        first_attempts = trainer.fleet.first_attempts

        def killed_first(*args, **kwargs):
            if ahead["iteration"] == 1 and not trainer.fleet.events:
                trainer.fleet.kill(0)
                time.sleep(1.0)  # until Ray has stopped it
            return first_attempts(*args, **kwargs)

        trainer.fleet.first_attempts = killed_first

    def step_with_push_faults(iteration):
        kills["left"] = trainer.weights.attempts if iteration == 1 else 0
        return step(iteration)

    trainer._generate_ahead, trainer.build, trainer.step = generating_ahead, build_with_faults, step_with_push_faults
    try:
        result = trainer.run(task)
        events = list(trainer.fleet.events) + list(trainer.weights.events)
    finally:
        trainer.shutdown()
    records = _train_records(result.run_dir)
    assert result.iterations == 3 and [r["optimizer_steps"] for r in records] == [1, 2, 3], events
    assert [r["staleness"] for r in records] == [0, 0, 1]
    assert [_versions(result.run_dir, it) for it in (1, 2, 3)] == [{0}, {1}, {1}]
    assert records[1]["seconds_rollout"] > 0  # generated before the update, after the push
    assert any("version 2, attempt 3" in e for e in events), events
    assert attempted == [1, 2, 2, 3]  # the failed push of version 2, then version 2 again, never the update


@pytest.mark.parametrize("learner_version, off_policy_steps, ok", [(3, 1, True), (2, 1, True), (4, 1, False), (3, 0, False), (1, 1, False)])
def test_a_batch_further_behind_than_allowed_is_never_trained(tmp_path, learner_version, off_policy_steps, ok):
    """The trainer's check on every batch: learner version minus the oldest version that wrote a trained token, within
    0..rollout.off_policy_steps. Base-model first attempts (version 0, context only) do not count."""
    from cluster.config import load_config
    from cluster.trainer import ScoreTrainer

    cfg = load_config(None, [f"rollout.off_policy_steps={off_policy_steps}"])
    trainer = ScoreTrainer(cfg, "unused", tmp_path)
    trainer.version = learner_version
    batch = pa.table({"a1_version": [2, 0], "a1_base": [False, True], "a2_version": [2, 2], "a2_response_ids": [[1], [2]]})
    if ok:
        assert trainer._check_staleness(batch, 5) == learner_version - 2
    else:
        with pytest.raises(RuntimeError, match=f"iteration 6's batch was sampled with weight version 2, {learner_version - 2} behind"):
            trainer._check_staleness(batch, 5)
