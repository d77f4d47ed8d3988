"""Break -> fail -> restore for every test whose model changed in issue #37 (item 5): each entry breaks one line
of the implementation, runs the tests that should catch it, restores the file (always), and prints one JSON line
per break; rc 1 there means the tests failed as they should. Run: .venv/bin/python scripts/break_checks.py [ID ...]
(about 6 min on 2 cores). Do not edit the tree while it runs."""
import json, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BREAKS = [
    # id, file, old, new, pytest node selection
    ("bench-ratio", "bench/common.py", "return self.value / self.baseline if", "return self.baseline / self.value if",
     "tests/test_bench_smoke.py"),
    ("fleet-one-shard", "actors/fleet.py", "parts = max(1, min(n, len(self.current)))", "parts = 1",
     "tests/test_generation.py::test_two_generators_produce_a_full_two_attempt_batch"),
    ("same-seed-every-shard", "actors/fleet.py", "if seed is None or shard == 0:", "if True:",
     "tests/test_generation.py::test_two_generators_draw_different_samples_for_the_same_prompt"),
    ("retokenised-attempt-1", "actors/prompts.py", "        body = list(y1_ids)\n", "        body = self.encode(self.tokenizer.decode(list(y1_ids)))\n",
     "tests/test_generation.py::test_second_attempt_prompt_is_the_chat_template_with_attempt_one_and_the_instruction"),
    ("stale-packed-head", "weight_sync/loading.py", "            for head in self.heads:\n                head.quant_method", "            for head in []:\n                head.quant_method",
     "tests/test_generation.py::test_weight_sync_changes_outputs_matches_transformers_and_restores tests/test_generation.py::test_colocated_shared_memory_sync_matches_transformers_and_restores"),
    ("no-version-check", "actors/generator.py", "if expect_version is not None and expect_version != self.version:", "if False:",
     "tests/test_generation.py::test_stale_version_is_refused"),
    ("dead-shard-dropped", "actors/fleet.py", "                    self.events.append(f\"{self.names[g]} died during {what}: {type(err).__name__}\")\n                    pending.append((idx, shard))",
     "                    self.events.append(f\"{self.names[g]} died during {what}: {type(err).__name__}\")",
     "tests/test_generation.py::test_killing_a_generator_mid_batch_still_gives_a_complete_batch"),
    ("no-push-retry", "weight_sync/manager.py", "                if attempt == self.attempts:", "                if True:",
     "tests/test_generation.py::test_a_generator_dying_mid_sync_is_rebuilt_around_and_brought_to_the_version"),
    ("untied-head-not-loaded", "weight_sync/loading.py", "self.model.load_weights(iter(bucket))", "self.model.load_weights(iter([(n, t) for n, t in bucket if n != 'lm_head.weight']))",
     "tests/test_generation.py::test_an_untied_lm_head_loads_like_any_other_weight[inplace]"),
    ("untied-head-not-reloaded", "weight_sync/loading.py", "                for name, tensor in bucket:\n                    count += 1",
     "                for name, tensor in bucket:\n                    if name == 'lm_head.weight':\n                        continue\n                    count += 1",
     "tests/test_generation.py::test_an_untied_lm_head_loads_like_any_other_weight[reload]"),
    ("resume-without-optimizer", "learner/core.py", 'self.engine.load_checkpoint(directory, tag="state")', 'self.engine.load_checkpoint(directory, tag="state", load_optimizer_states=False)',
     "tests/test_learner.py::test_resume_matches_an_uninterrupted_run_exactly"),
    ("raw-actor-error", "learner/group.py", "        except RayActorError as err:\n            raise LearnerError(f\"a learner rank died while {what}: {err.__class__.__name__}; resume from the last checkpoint\") from None\n\n    def shards",
     "        except RayActorError as err:\n            raise\n\n    def shards",
     "tests/test_learner.py::test_a_killed_learner_rank_fails_the_update_with_a_clear_error"),
    ("given-reference-ignored", "learner/core.py", "refs = [mb.given_ref or self._no_grad_logprobs", "refs = [self._no_grad_logprobs",
     "tests/test_learner.py::test_separate_reference_scores_equal_the_in_rank_reference"),
    ("joint-attempt-1-off-by-one", "learner/batch.py", "            start = len(x) - 1\n            mask[i", "            start = len(x)\n            mask[i",
     "tests/test_learner.py::test_one_joint_pass_gives_the_loss_and_gradients_of_two_passes"),
    ("vllm-old-policy", "learner/core.py", "old = olds[mi] if olds is not None else [lp.detach() for lp in lps]", "old = olds[mi] if olds is not None else list(mb.rollout)",
     "tests/test_learner.py::test_update_uses_the_learners_own_old_policy_not_vllms"),
    # issue #33, item 3 (N attempts): the implementation lines behind the N = 3 tests
    ("shaping-against-attempt-1", "learner/objectives.py", "shaped_reward(prev, r, alpha) for prev, r in zip(rewards, rewards[1:])",
     "shaped_reward(prev, r, alpha) for prev, r in zip([rewards[0]] * len(rewards), rewards[1:])",
     "tests/test_objectives.py::test_three_attempts_stage2_credits_attempt_3_with_its_own_shaped_reward"),
    ("stage1-attempt-3-untrained", "learner/objectives.py", "return [None, *(r.float() for r in rewards[1:])]",
     "return [None, rewards[1].float(), *(None for r in rewards[2:])]",
     "tests/test_objectives.py::test_three_attempts_stage1_trains_attempts_2_and_3_and_pins_attempt_1 tests/test_learner.py::test_three_attempts_in_one_pass_each_trained_on_its_own_reward"),
    ("dynamic-sampling-two-attempts-only", "learner/objectives.py", "for a, u in enumerate(task_returns(stage, rewards, alpha, gamma)):",
     "for a, u in enumerate(task_returns(stage, rewards, alpha, gamma)[:2]):",
     "tests/test_objectives.py::test_three_attempts_dynamic_sampling_counts_every_trained_attempt"),
    ("later-prompt-from-attempt-1", "actors/generator.py", 'before = f"a{attempt - 1}"', 'before = "a1"',
     "tests/test_training.py::test_three_attempts_train_end_to_end_with_token_exact_prompts"),
    # issue #36 (trackers)
    ("tracker-resends-redone-steps", "cluster/trackers.py", 'if step <= self.state["steps"].get(space, -1):', "if False:",
     "tests/test_trackers.py::test_a_resumed_run_continues_the_same_wandb_and_mlflow_runs_without_a_step_twice"),
    ("trackers-clobber-each-others-state", "cluster/trackers.py", "json.dumps({**self._read(), self.key: self.state}", "json.dumps({self.key: self.state}",
     "tests/test_trackers.py::test_a_resumed_run_continues_the_same_wandb_and_mlflow_runs_without_a_step_twice"),
    # issue #37: the tests moved to the tiny random model this session (with MOVING)
    ("resume-skips-learner-state", "cluster/trainer.py", "        self.learner.load(str(ckpt.path))\n        self.iteration = ckpt.iteration",
     "        self.iteration = ckpt.iteration",
     "tests/test_training.py::test_resume_after_interruption_reproduces_the_uninterrupted_run"),
    ("colocated-buffer-not-filled", "weight_sync/transports.py", "flat = pack(bucket_view(self.buffers[i % 2], bucket), bucket, it)",
     "flat = bucket_view(self.buffers[i % 2], bucket)",
     "tests/test_training.py::test_colocated_run_shares_bundles_and_syncs_through_shared_buffers"),
    ("no-weight-version-gauge", "cluster/run_log.py", '"version": "weight_version",', "",
     "tests/test_job_submit.py::test_ray_job_submit_runs_training_and_exposes_actors_and_metrics"),
    # issue #35 (rollout.off_policy_steps)
    ("no-overlap", "cluster/trainer.py", "overlap = self.cfg.rollout.off_policy_steps > 0 and", "overlap = False and",
     "tests/test_overlap.py::test_each_batch_is_sampled_during_the_update_before_it_one_version_behind"),
    ("ahead-not-checkpointed", "cluster/trainer.py", "        if self.ahead is not None:  # sampled with", "        if False:  # sampled with",
     "tests/test_overlap.py::test_a_stopped_overlapped_run_resumes_to_the_uninterrupted_one"),
    ("ahead-ignored-on-resume", "cluster/trainer.py", "        self.ahead = RolloutAhead.load(ckpt.path)\n", "        self.ahead = None\n",
     "tests/test_overlap.py::test_a_stopped_overlapped_run_resumes_to_the_uninterrupted_one"),
    ("ahead-resynced-mid-update", "cluster/trainer.py", "            batch, generated, stats = self.collect(iteration, self.stage_of(iteration))\n",
     "            batch, generated, stats = self._with_generator_recovery(lambda: self.collect(iteration, self.stage_of(iteration)), 'ahead')\n",
     "tests/test_overlap.py::test_generator_deaths_during_a_rollout_ahead_and_during_a_push_are_recovered"),
    ("staleness-unchecked", "cluster/trainer.py", "if not 0 <= lag <= allowed:", "if False:",
     "tests/test_overlap.py::test_a_batch_further_behind_than_allowed_is_never_trained"),
    ("no-is-weight-when-lagging", "learner/core.py", "(self.dtype != torch.float32 or s.off_policy_steps > 0)", "(self.dtype != torch.float32)",
     "tests/test_overlap.py::test_each_batch_is_sampled_during_the_update_before_it_one_version_behind"),
]

only = sys.argv[1:]
Path("/tmp/break_checks").mkdir(exist_ok=True)
results = []
for bid, rel, old, new, nodes in BREAKS:
    if only and bid not in only:
        continue
    path = ROOT / rel
    original = path.read_text()
    assert original.count(old) == 1, (bid, original.count(old))
    path.write_text(original.replace(old, new))
    t = time.monotonic()
    try:
        p = subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0", *nodes.split()],
                           cwd=ROOT, capture_output=True, text=True)
    finally:
        path.write_text(original)
    out = p.stdout + p.stderr
    Path(f"/tmp/break_checks/{bid}.log").write_text(out)
    summary = [l for l in out.splitlines() if l.startswith(("FAILED", "ERROR")) or " passed" in l or " failed" in l]
    results.append({"break": bid, "file": rel, "tests": nodes, "rc": p.returncode, "seconds": round(time.monotonic() - t), "summary": summary[-3:]})
    print(json.dumps(results[-1]), flush=True)
Path("/tmp/break_checks/results.json").write_text(json.dumps(results, indent=1))
