"""The learner: batch layout, and the DeepSpeed ZeRO group on Ray (CPU accelerator, gloo): learning a
rewarded completion, exact resume, export, gradient accumulation across micro-batches and ranks, other
model families' heads.

Models: the real embedded model where the test is about behaviour (a ZeRO group's update raises the rewarded
completion; bf16 master weights keep the small updates a trained model takes). The tiny random Llama of the
same architecture (tests/tiny_models.py) everywhere the test is about mechanics that hold on any weights:
resume exactness, a killed rank, the separate reference's columns, the joint pass against two passes, the old
policy's source, accumulation and ranks, chunked heads, offloading. Its batch is built the same way, with the
tiny model's own log-probs."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest
import torch

from learner.batch import attempt_inputs, joint_inputs, length_sorted_micro_batches, num_micro_batches, padded_fraction
from tests.batches import ONE_REWARDED, build_batch


def _row(x1, y1, x2, y2):
    return {"a1_prompt_ids": x1, "a1_response_ids": y1, "a1_logprobs": [-0.5] * len(y1),
            "a2_prompt_ids": x2, "a2_response_ids": y2, "a2_logprobs": [-0.25] * len(y2)}


def test_masks_cover_exactly_the_response_tokens():
    table = pa.Table.from_pylist([_row([1, 2], [3, 4], [1, 2, 3, 4, 9], [5]), _row([1], [7], [1, 7, 9, 9], [6, 8])])
    a2 = attempt_inputs(table, "a2")
    assert a2.input_ids.tolist() == [[1, 2, 3, 4, 9, 5], [1, 7, 9, 9, 6, 8]]
    # target column i predicts input token i+1: y2 of row 0 (token 5) is predicted at column 4
    assert a2.action_mask.tolist() == [[0, 0, 0, 0, 1], [0, 0, 0, 1, 1]]
    assert a2.old_logp[0, 4] == -0.25 and a2.old_logp[0, :4].abs().sum() == 0
    joint = joint_inputs(table)
    assert joint is not None
    # attempt-1 tokens inside the attempt-2 sequence: actions for attempt 1, context for attempt 2
    assert joint.masks[0].tolist() == [[0, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert (joint.masks[0] * joint.inputs.action_mask).sum() == 0
    assert joint.old_logps[0][0, 1:3].tolist() == [-0.5, -0.5]
    # a second prompt that does not extend x1 + y1 falls back to two passes
    assert joint_inputs(pa.Table.from_pylist([_row([1, 2], [3], [1, 2, 4], [5])])) is None


def test_micro_batches_group_rows_of_similar_length():
    lengths = [10, 50, 12, 48, 30, 11, 49, 29]
    micros = length_sorted_micro_batches(lengths, 2)
    assert len(micros) == num_micro_batches(8, 2) == 4
    assert micros == [[1, 6], [3, 4], [7, 2], [5, 0]]  # longest first, then cut
    assert sorted(i for m in micros for i in m) == list(range(8))
    # padding only to each micro-batch's longest row: 50+50 + 48+48 + 29+29 + 11+11 = 276 computed for 239 real
    assert padded_fraction(lengths, micros) == pytest.approx(1 - 239 / 276)
    assert padded_fraction(lengths, [list(range(8))]) == pytest.approx(1 - 239 / 400)  # one padded block
    assert num_micro_batches(7, 2) == 4
    with pytest.raises(ValueError):
        num_micro_batches(8, 0)


@pytest.fixture(scope="module")
def batch(model_path):
    return build_batch(model_path, ONE_REWARDED)


@pytest.fixture(scope="module")
def tiny_batch(tiny_model_path):
    """ONE_REWARDED with the tiny model's own sampling log-probs."""
    return build_batch(tiny_model_path, ONE_REWARDED)


def _group(model_path, zero_stage, lr=2e-5, dtype="float32"):
    from learner.core import LearnerSettings
    from learner.group import LearnerGroup

    settings = LearnerSettings(model_path=model_path, zero_stage=zero_stage, lr=lr, rows_per_micro_batch=2, rows_per_rank=2, k=2, dtype=dtype)
    return LearnerGroup(settings, num_ranks=2, cpus_per_rank=1)


@pytest.mark.parametrize("zero_stage,dtype", [(2, "float32"), (3, "float32"), (2, "bfloat16")])
def test_two_rank_zero_group_raises_the_rewarded_completion(ray_local, model_path, batch, zero_stage, dtype, tmp_path):
    group = _group(model_path, zero_stage, dtype=dtype)
    try:
        before = group.sequence_logprob(batch, "a2")
        for _ in range(2):
            metrics = group.update(batch, stage=1)
        after = group.sequence_logprob(batch, "a2")
        rewards = batch["r2"].to_pylist()
        for p in range(2):  # per problem: the rewarded attempt 2 gains against its unrewarded sibling
            good, bad = (2 * p, 2 * p + 1) if rewards[2 * p] > rewards[2 * p + 1] else (2 * p + 1, 2 * p)
            assert after[good] > before[good] + 0.1
            assert after[good] - before[good] > after[bad] - before[bad]
        assert metrics["optimizer_steps"] == 2 and metrics["grad_norm"] > 0 and metrics["tokens"] > 0
        assert metrics["kl_attempt1"] > 0 and metrics["kl_attempt2"] > 0

        # exported Hugging Face weights equal the learner's full (gathered) weights
        from transformers import AutoModelForCausalLM

        exported = group.export_hf(str(tmp_path / "hf"))
        model = AutoModelForCausalLM.from_pretrained(exported, dtype=getattr(torch, dtype))
        full = group.full_state()
        params = dict(model.named_parameters())
        assert set(full) == set(params)
        for name, tensor in full.items():
            assert tensor.dtype == getattr(torch, dtype) and torch.equal(params[name].detach(), tensor), name
        assert json.loads((tmp_path / "hf" / "score_export.json").read_text())["optimizer_steps"] == 2
    finally:
        group.shutdown()


def test_resume_matches_an_uninterrupted_run_exactly(ray_local, tiny_model_path, tiny_batch, tmp_path):
    model_path, batch = tiny_model_path, tiny_batch
    group = _group(model_path, 2)
    try:
        group.update(batch, stage=2)
        group.save(str(tmp_path / "ckpt"), {"iteration": 1, "stage": 2})
        expected = group.update(batch, stage=2)
        expected_weights = group.full_state()
    finally:
        group.shutdown()
    resumed = _group(model_path, 2)
    try:
        state = resumed.load(str(tmp_path / "ckpt"))
        assert state["iteration"] == 1 and state["stage"] == 2
        got = resumed.update(batch, stage=2)
        got_weights = resumed.full_state()
    finally:
        resumed.shutdown()
    for key in ("loss", "pg_loss", "kl_attempt1", "kl_attempt2", "grad_norm"):
        assert got[key] == expected[key], key
    assert all(torch.equal(got_weights[n], expected_weights[n]) for n in expected_weights)


def test_separate_reference_scores_equal_the_in_rank_reference(tiny_model_path, tiny_batch):
    """The reference group's columns equal what a learner rank computes from its own copy, and
    a rank built without a reference uses them."""
    model_path, batch = tiny_model_path, tiny_batch
    from learner.batch import joint_inputs
    from learner.core import LearnerCore, LearnerSettings
    from learner.reference import ReferenceScorer

    scored = ReferenceScorer(model_path, dtype="float32").score(batch, rows_per_pass=3)
    assert scored.num_rows == batch.num_rows
    for prefix in ("a1", "a2"):
        lens = [len(r) for r in batch[f"{prefix}_response_ids"].to_pylist()]
        assert [len(r) for r in scored[f"{prefix}_ref_logprobs"].to_pylist()] == lens
    # sampling log-probs of tests.batches come from the same base model at temperature 1
    for prefix in ("a1", "a2"):
        for got, want in zip(scored[f"{prefix}_ref_logprobs"].to_pylist(), batch[f"{prefix}_logprobs"].to_pylist()):
            assert got == pytest.approx(want, abs=1e-4)
    joint = joint_inputs(scored)
    assert joint.ref_logps is not None and torch.equal(joint.ref_logps[0] != 0, joint.masks[0] != 0)

    # one optimiser step: a rank without its own reference, fed the columns, matches a rank with one
    common = dict(model_path=model_path, lr=1e-5, rows_per_micro_batch=4, rows_per_rank=4, k=2, dtype="float32")
    with_columns = LearnerCore(LearnerSettings(**common, reference_placement="separate"))
    assert with_columns.reference is None
    got = [with_columns.update(scored, stage=1) for _ in range(2)][-1]
    with_columns.close()
    in_rank = LearnerCore(LearnerSettings(**common))
    want = [in_rank.update(batch, stage=1) for _ in range(2)][-1]
    in_rank.close()
    for key in ("loss", "kl_attempt1", "kl_attempt2", "pg_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-5), key
    without = LearnerCore(LearnerSettings(**common, reference_placement="separate"))
    try:
        with pytest.raises(RuntimeError, match="reference_placement"):
            without.update(batch, stage=1)
    finally:
        without.close()


def test_a_killed_learner_rank_fails_the_update_with_a_clear_error(ray_local, tiny_model_path, tiny_batch):
    from learner.group import LearnerError

    model_path, batch = tiny_model_path, tiny_batch
    group = _group(model_path, 2)
    try:
        group.kill_rank(1)
        with pytest.raises(LearnerError, match="resume from the last checkpoint"):
            group.update(batch, stage=1)
    finally:
        group.shutdown()


def test_one_joint_pass_gives_the_loss_and_gradients_of_two_passes(tiny_model_path, tiny_batch):
    """Attempt 2's sequence holds attempt 1: the joint layout must score both attempts exactly as two passes do."""
    model_path, batch = tiny_model_path, tiny_batch
    from transformers import AutoModelForCausalLM

    from learner.batch import attempt_inputs, joint_inputs
    from learner.core import attempt_logprobs, micro_batch
    from learner.objectives import AttemptTensors, ObjectiveSettings, stage2_loss
    from learner.policy import PolicyLogprobs

    model = PolicyLogprobs(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32))
    reference = PolicyLogprobs(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)).eval()
    with torch.no_grad():  # move the policy away from the reference so that the KL terms are not zero
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    rows, cpu = range(0, batch.num_rows), torch.device("cpu")
    joint = micro_batch(rows, cpu, joint=joint_inputs(batch))
    split = micro_batch(rows, cpu, per_attempt=[attempt_inputs(batch, "a1"), attempt_inputs(batch, "a2")])
    assert joint.joint is not None and split.joint is None
    r1, r2 = torch.tensor(batch["r1"].to_pylist()), torch.tensor(batch["r2"].to_pylist())
    results = []
    for mb in (joint, split):
        model.zero_grad()
        lp1, lp2 = attempt_logprobs(model, mb, [1.0, 1.0])
        with torch.no_grad():
            ref1, ref2 = attempt_logprobs(reference, mb, [1.0, 1.0])
        t1 = AttemptTensors(lp1, lp1.detach(), ref1, mb.masks[0], mb.rollout[0])
        t2 = AttemptTensors(lp2, lp2.detach(), ref2, mb.masks[1], mb.rollout[1])
        out = stage2_loss(t1, t2, r1, r2, ObjectiveSettings(k=2))
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (jo, jg), (so, sg) = results
    for key in ("loss", "pg_loss", "kl1", "kl2"):
        assert getattr(jo, key).item() == pytest.approx(getattr(so, key).item(), rel=1e-4, abs=1e-6), key
    assert jo.kl1.item() > 0 and jo.kl2.item() > 0
    worst = max(float((g - sg[n]).norm() / sg[n].norm().clamp(min=1e-12)) for n, g in jg.items())
    assert worst < 1e-3  # float32 sums in another order: each parameter's gradient agrees to 0.1% in norm


def test_update_uses_the_learners_own_old_policy_not_vllms(tiny_model_path, tiny_batch):
    """The ratio's old policy is the learner's: an update on a batch whose vLLM log-probs are shifted by 0.3 is
    identical (truncated IS off), nothing is clipped although the shift is beyond the clip range, the mismatch
    metrics report the shift, and with the IS weight on the update differs."""
    from learner.core import LearnerCore, LearnerSettings

    model_path, batch = tiny_model_path, tiny_batch
    shifted = batch
    for prefix in ("a1", "a2"):
        col = f"{prefix}_logprobs"
        values = [[v - 0.3 for v in row] for row in batch[col].to_pylist()]
        shifted = shifted.set_column(shifted.schema.get_field_index(col), col, pa.array(values, pa.list_(pa.float32())))
    common = dict(model_path=model_path, lr=1e-5, rows_per_micro_batch=2, rows_per_rank=4, k=2, clip_ratio=0.2, dtype="float32")
    out = {}
    for name, table, extra in (("same", batch, {"vllm_is": "off"}), ("shifted", shifted, {"vllm_is": "off"}),
                               ("is_on", shifted, {"vllm_is": "on", "vllm_is_cap": 1.2})):
        core = LearnerCore(LearnerSettings(**common, **extra))
        metrics = core.update(table, stage=2)
        out[name] = (metrics, core.sequence_logprob(batch, "a2"))
        core.close()
    (same, lp_same), (shf, lp_shf), (ison, _) = out["same"], out["shifted"], out["is_on"]
    assert same["clipped_fraction"] == 0 and shf["clipped_fraction"] == 0  # the first step's ratio is exactly 1
    assert shf["loss"] == same["loss"] and lp_shf == lp_same  # vLLM's numbers did not enter the update
    # the batch's log-probs are the base model's own: the mismatch is ~0 unshifted and 0.3 shifted
    for a in ("attempt1", "attempt2"):
        assert same[f"mismatch_max_abs_{a}"] < 1e-3
        assert shf[f"mismatch_mean_abs_{a}"] == pytest.approx(0.3, abs=1e-3)
        assert shf[f"mismatch_kl_{a}"] == pytest.approx(math.exp(0.3) - 0.3 - 1, abs=1e-3)
    # pi_learner / pi_vllm = exp(0.3) = 1.35 is capped at 1.2: every policy-gradient token is scaled by 1.2,
    # and since the policy starts at the reference (KL gradient 0), so is the whole gradient
    assert ison["is_weight_mean_attempt1"] == pytest.approx(1.2, abs=1e-6) == ison["is_weight_mean_attempt2"]
    assert ison["grad_norm"] == pytest.approx(1.2 * same["grad_norm"], rel=1e-4)


def test_an_adaptive_beta2_reaches_the_update_as_its_attempt_1_kl_weight(tiny_model_path, tiny_batch):
    """The trainer's adaptive beta2 (learner/kl_controller.py) is sent with each Stage I update: an update sent
    beta2 = 2 equals, bit for bit, that of a learner built with beta2 = 2, and differs from its own setting's.
    Once attempt 2's policy gradient has moved the policy (the first update; attempt 1 starts at the reference,
    where the KL gradient is 0), the stronger weight keeps attempt 1 nearer the base model: what Stage I's beta2
    is for (the paper's Section 5.1)."""
    from learner.core import LearnerCore, LearnerSettings

    common = dict(model_path=tiny_model_path, lr=1e-4, rows_per_micro_batch=2, rows_per_rank=4, k=2, dtype="float32")
    runs = {}
    for name, built, sent in (("sent", 0.01, 2.0), ("built", 2.0, None), ("own", 0.01, None)):
        core = LearnerCore(LearnerSettings(**common, beta2=built))
        runs[name] = [core.update(tiny_batch, stage=1, beta2=sent) for _ in range(6)]
        core.close()
    keys = ("loss", "kl_attempt1", "kl_attempt2", "grad_norm")
    assert [[m[k] for k in keys] for m in runs["sent"]] == [[m[k] for k in keys] for m in runs["built"]]
    assert runs["sent"][0]["kl_attempt1"] == 0 == runs["own"][0]["kl_attempt1"]
    assert runs["sent"][1]["loss"] != runs["own"][1]["loss"]
    # measured (tiny model, lr 1e-4): 0.006 against 0.044 after five steps
    assert 0 < runs["sent"][5]["kl_attempt1"] < runs["own"][5]["kl_attempt1"] / 3


def test_a_base_written_first_attempt_is_context_not_an_action(tiny_model_path):
    """``a1_base`` rows (algorithm.stage2_base_first_attempts; the paper's offline prompts, Section 5.3): in Stage II
    the policy's own rewarded first attempt gains on its unrewarded sibling, but a base-written one does not, since
    its tokens get no policy-gradient term and no KL. Attempt 2 on those rows still learns from r2_hat."""
    from learner.core import LearnerCore, LearnerSettings
    from tests.batches import DISTINCT_ATTEMPTS

    batch = build_batch(tiny_model_path, DISTINCT_ATTEMPTS)
    based = batch.append_column("a1_base", pa.array([True] * batch.num_rows, pa.bool_()))
    settings = LearnerSettings(model_path=tiny_model_path, lr=1e-3, rows_per_micro_batch=2, rows_per_rank=4, k=2, dtype="float32")
    gains, metrics = {}, {}
    for name, table in (("policy", batch), ("base", based)):
        core = LearnerCore(settings)
        before = {a: core.sequence_logprob(batch, a) for a in ("a1", "a2")}
        core.update(table, stage=2)
        after = {a: core.sequence_logprob(batch, a) for a in ("a1", "a2")}
        metrics[name] = core.update(table, stage=2)  # the policy has moved: attempt 1's KL is no longer 0 by itself
        core.close()
        # per problem (rows 2p rewarded, 2p + 1 not): how much more the rewarded attempt gained than its sibling
        gains[name] = {a: [(after[a][2 * p] - before[a][2 * p]) - (after[a][2 * p + 1] - before[a][2 * p + 1]) for p in range(2)]
                       for a in ("a1", "a2")}
    assert min(gains["policy"]["a1"]) > 0.05  # the policy's first attempts are trained on r1
    assert max(abs(g) for g in gains["base"]["a1"]) < min(gains["policy"]["a1"]) / 5  # base-written ones are not
    assert min(gains["base"]["a2"]) > 0.05 and min(gains["policy"]["a2"]) > 0.05  # attempt 2 learns on both
    assert metrics["policy"]["kl_attempt1"] > 0 == metrics["base"]["kl_attempt1"] < metrics["base"]["kl_attempt2"]


def test_three_attempts_in_one_pass_each_trained_on_its_own_reward(tiny_model_path):
    """``algorithm.attempts=3`` in Stage I (this project's extension of Section 5.1): one update raises, per problem,
    attempt 2 where r2 rewards it and attempt 3 where r3 rewards it (the other sibling), while attempt 1, which has
    no task reward, is not pulled apart. Attempt 3's sequence holds attempts 1 and 2: one forward pass covers all."""
    from learner.batch import joint_inputs
    from learner.core import LearnerCore, LearnerSettings
    from tests.batches import DISTINCT_ATTEMPTS, THREE_ATTEMPTS

    batch = build_batch(tiny_model_path, THREE_ATTEMPTS)
    joint = joint_inputs(batch)
    assert joint is not None and len(joint.masks) == 3 and float(sum(m.sum() for m in joint.masks)) == sum(
        batch[f"a{t}_length"].to_pylist()[i] for t in (1, 2, 3) for i in range(batch.num_rows))
    assert float((joint.masks[0] * joint.masks[1] + joint.masks[1] * joint.masks[2]).sum()) == 0  # disjoint
    core = LearnerCore(LearnerSettings(model_path=tiny_model_path, lr=1e-3, rows_per_micro_batch=2, rows_per_rank=4, k=2, dtype="float32",
                                       attempts=3))
    try:
        with pytest.raises(ValueError, match="2 attempts, built for 3"):
            core.update(build_batch(tiny_model_path, DISTINCT_ATTEMPTS), stage=1)
        before = {a: core.sequence_logprob(batch, a) for a in ("a1", "a2", "a3")}
        metrics = core.update(batch, stage=1)
        after = {a: core.sequence_logprob(batch, a) for a in ("a1", "a2", "a3")}
    finally:
        core.close()
    gain = {a: [(after[a][2 * p] - before[a][2 * p]) - (after[a][2 * p + 1] - before[a][2 * p + 1]) for p in range(2)] for a in before}
    assert min(gain["a2"]) > 0.05  # sibling 0 rewarded at attempt 2
    assert max(gain["a3"]) < -0.05  # sibling 1 rewarded at attempt 3
    assert max(abs(g) for g in gain["a1"]) < min(gain["a2"]) / 5
    assert {"kl_attempt3", "reward_attempt3", "advantage_mean_attempt3", "mismatch_mean_abs_attempt3"} <= set(metrics)
    assert metrics["reward_attempt3"] == 0.5 and metrics["mismatch_max_abs_attempt3"] < 1e-3


# --------------------------------------------------------------------------- accumulation and ranks
# These use the tiny random model of the embedded architecture (tests/tiny_models.py): what they test is
# gradient arithmetic across micro-batches and ranks, not what the model knows, and it is the same on any
# weights. The batch's two problems differ fourfold in response length, so the two ranks' token counts do.


@pytest.fixture(scope="module")
def unequal_batch(tiny_model_path):
    from tests.batches import UNEQUAL

    return build_batch(tiny_model_path, UNEQUAL)


def _first_update(model_path, batch, zero_stage, loss_agg, ranks, rows_per_micro, stage=2, chunk=2048):
    """The metrics of the first update of a fresh learner on ``batch`` (one rank in this process, or a Ray group)."""
    from learner.core import LearnerCore, LearnerSettings
    from learner.group import LearnerGroup

    settings = LearnerSettings(model_path=model_path, zero_stage=zero_stage, lr=1e-5, rows_per_micro_batch=rows_per_micro,
                               rows_per_rank=batch.num_rows // ranks, k=2, loss_agg=loss_agg, dtype="float32", logprob_chunk_positions=chunk)
    if ranks == 1:
        core = LearnerCore(settings)
        try:
            return core.update(batch, stage=stage)
        finally:
            core.close()
    group = LearnerGroup(settings, num_ranks=ranks, cpus_per_rank=1)
    try:
        return group.update(batch, stage=stage)
    finally:
        group.shutdown()


def test_the_ranks_of_the_batch_have_unequal_token_counts(unequal_batch):
    lengths = [len(a) + len(b) for a, b in zip(unequal_batch["a1_response_ids"].to_pylist(), unequal_batch["a2_response_ids"].to_pylist())]
    assert sum(lengths[2:]) > 3 * sum(lengths[:2])  # rank 1's problem has over three times rank 0's action tokens


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_micro_batches_and_ranks_give_the_whole_batch_gradient(ray_local, tiny_model_path, unequal_batch, zero_stage):
    """Rows are cut into length-sorted micro-batches after the advantages are computed over the whole batch: four
    micro-batches of one row (gradient accumulation) on one rank, and two ranks of one-row micro-batches, give the
    loss and the gradient of one micro-batch of all four rows, under ZeRO-2 and ZeRO-3 alike. (ZeRO-3 adds a
    micro-batch's gradient to the accumulated one only when the pass went through ``engine.forward``.)"""
    whole = _first_update(tiny_model_path, unequal_batch, zero_stage, "token_mean", ranks=1, rows_per_micro=4)
    accumulated = _first_update(tiny_model_path, unequal_batch, zero_stage, "token_mean", ranks=1, rows_per_micro=1)
    # and the head scoring 5 positions at a time, recomputed in the backward pass (ZeRO-3 gathers its weights again)
    two_ranks = _first_update(tiny_model_path, unequal_batch, zero_stage, "token_mean", ranks=2, rows_per_micro=1, chunk=5)
    assert accumulated["padded_fraction"] == 0.0 < whole["padded_fraction"]
    assert whole["grad_norm"] > 0
    for got in (accumulated, two_ranks):
        for key in ("loss", "pg_loss", "kl_attempt1", "kl_attempt2", "advantage_abs_mean_attempt1", "grad_norm"):
            assert got[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-7), key


@pytest.mark.parametrize("loss_agg", ["seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_two_ranks_with_unequal_token_counts_give_the_one_rank_gradient(ray_local, tiny_model_path, unequal_batch, loss_agg):
    """Every aggregation is the whole batch's on any number of ranks (``token_mean`` in the test above): the
    denominators are the whole batch's counts, not a rank's."""
    whole = _first_update(tiny_model_path, unequal_batch, 3, loss_agg, ranks=1, rows_per_micro=4)
    two_ranks = _first_update(tiny_model_path, unequal_batch, 3, loss_agg, ranks=2, rows_per_micro=1)
    assert whole["grad_norm"] > 0
    for key in ("loss", "pg_loss", "kl_attempt1", "kl_attempt2", "grad_norm"):
        assert two_ranks[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-7), key


def test_bf16_learner_keeps_small_updates_in_fp32_master_weights(model_path, batch):
    """bf16 compute with DeepSpeed's fp32 master weights: at lr 1e-6 one step moves most master weights by ~1e-6,
    an update that bf16 weights alone would lose (it moves under 2% of them); the bf16 weights the forward pass
    and the generators use are the master's rounding."""
    from learner.core import LearnerCore, LearnerSettings

    core = LearnerCore(LearnerSettings(model_path=model_path, lr=1e-6, rows_per_micro_batch=4, rows_per_rank=4, k=2, dtype="bfloat16"))
    assert core.dtype == torch.bfloat16 and core.reference.model.dtype == torch.bfloat16
    masters = core.engine.optimizer.single_partition_of_fp32_groups
    assert all(m.dtype == torch.float32 for m in masters)
    before = [m.clone() for m in masters]
    weights = {n: p.detach().clone() for n, p in core.named_parameters()}
    metrics = core.update(batch, stage=2)
    moved = torch.cat([(m - b).abs() for m, b in zip(masters, before)])
    assert (moved > 5e-7).float().mean() > 0.5 and moved.max() < 2e-6  # AdamW's first step is ~lr per weight
    params = core.named_parameters()
    changed = sum(int((p.detach() != weights[n]).sum()) for n, p in params) / sum(p.numel() for _, p in params)
    assert changed < 0.02
    flat = torch.cat([p.detach().reshape(-1) for _, p in params])
    assert torch.equal(flat, torch.cat([m for m in masters]).to(torch.bfloat16)[: flat.numel()])
    core.close()
    # bf16 on the learner side: the truncated importance weight is on by default (vllm_is: auto)
    assert "is_weight_mean_attempt1" in metrics and metrics["mismatch_max_abs_attempt1"] > 0


# --------------------------------------------------------------------------- the model's own head
# Tiny random models of other families (tests/tiny_models.py): what is tested is which distribution the
# learner scores, a property of the architecture's head, not of trained weights.

HEAD_FAMILIES = ["gemma2", "cohere", "granite", "gpt2", "llama-untied"]


def _own_logprobs(model, inputs, temperature):
    """What the model's own forward gives: log_softmax(model(...).logits / T) at each target."""
    with torch.no_grad():
        logits = model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, use_cache=False).logits[:, :-1].float()
    return torch.log_softmax(logits / temperature, dim=-1).gather(-1, inputs.targets.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("variant", HEAD_FAMILIES)
def test_the_learner_scores_each_familys_own_distribution(model_path, unequal_batch, variant):
    """Gemma-2's soft-capped logits, Cohere's logit scale, Granite's logit divisor, GPT-2's ``transformer`` backbone
    and an untied head: the learner's log-probs at the action tokens equal ``model(...).logits``' at the sampling
    temperature, and for the families with a post-head transform, skipping it would be far off."""
    from transformers import AutoModelForCausalLM

    from learner.batch import joint_inputs
    from learner.policy import PolicyLogprobs, post_head_transform
    from tests.tiny_models import tiny_model

    model = AutoModelForCausalLM.from_pretrained(tiny_model(variant, model_path), dtype=torch.float32).eval()
    policy = PolicyLogprobs(model)
    joint = joint_inputs(unequal_batch)
    inputs, keep = joint.inputs, (joint.masks[0] + joint.inputs.action_mask) > 0
    with torch.no_grad():
        ours = policy(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, targets=inputs.targets, keep=keep, temperature=0.7)
    theirs = _own_logprobs(model, inputs, 0.7)
    assert float((ours - theirs)[keep].abs().max()) < 1e-4
    assert float(ours[~keep].abs().max()) == 0.0  # only the kept positions are scored
    if post_head_transform(model) is not None:
        policy._transform = None
        with torch.no_grad():
            raw = policy(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, targets=inputs.targets, keep=keep, temperature=0.7)
        assert float((raw - theirs)[keep].abs().max()) > 0.5


@pytest.mark.parametrize("variant,zero_stage", [("gemma2", 3), ("gpt2", 2)])
def test_a_learner_rank_trains_other_families_through_the_engine(model_path, unequal_batch, variant, zero_stage):
    """A whole learner rank (DeepSpeed engine, reference, update) on a family whose backbone or head is not
    Llama's: its log-probs are the model's own before and after an update, and the update moved them."""
    from transformers import AutoModelForCausalLM

    from learner.batch import attempt_inputs
    from learner.core import LearnerCore, LearnerSettings
    from tests.tiny_models import tiny_model

    path = tiny_model(variant, model_path)
    core = LearnerCore(LearnerSettings(model_path=path, zero_stage=zero_stage, lr=1e-3, rows_per_micro_batch=2, rows_per_rank=4, k=2,
                                       dtype="float32"))
    try:
        before = core.sequence_logprob(unequal_batch, "a2")
        metrics = core.update(unequal_batch, stage=2)
        after = core.sequence_logprob(unequal_batch, "a2")
    finally:
        core.close()
    inputs = attempt_inputs(unequal_batch, "a2")
    own = (_own_logprobs(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), inputs, 1.0) * inputs.action_mask).sum(dim=1)
    assert before == pytest.approx(own.tolist(), abs=1e-3)
    assert metrics["grad_norm"] > 0 and max(abs(a - b) for a, b in zip(after, before)) > 1e-3


def test_a_head_the_learner_cannot_reproduce_is_refused_in_one_line(model_path):
    """A causal LM whose forward changes the logits in a way the learner does not know (as custom code can)."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from learner.policy import HeadError, PolicyLogprobs, check_head
    from tests.tiny_models import tiny_model

    class ScaledLlama(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3.0
            return out

    path = tiny_model("llama", model_path)
    assert check_head(PolicyLogprobs(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)), torch.device("cpu")) < 1e-4
    with pytest.raises(HeadError, match=r"ScaledLlama \(llama\): the learner's log-probs differ") as err:
        check_head(PolicyLogprobs(ScaledLlama.from_pretrained(path, dtype=torch.float32)), torch.device("cpu"))
    assert "\n" not in str(err.value)


def test_a_batch_the_joint_pass_cannot_take_is_scored_in_two_passes_and_logged(tiny_model_path, unequal_batch, caplog):
    """A chat template that rewrites earlier turns breaks the shared prefix of one row: the learner says so once
    and scores that batch in two passes per row."""
    import logging

    from learner.core import LearnerCore, LearnerSettings

    rows = unequal_batch.to_pylist()
    rows[3]["a2_prompt_ids"] = rows[3]["a2_prompt_ids"][:3] + [rows[3]["a2_prompt_ids"][3] + 1] + rows[3]["a2_prompt_ids"][4:]
    broken = pa.Table.from_pylist(rows, schema=unequal_batch.schema)
    core = LearnerCore(LearnerSettings(model_path=tiny_model_path, rows_per_micro_batch=2, rows_per_rank=4, k=2, dtype="float32"))
    try:
        def ours():  # other libraries in this process (vLLM) log too
            return [r.getMessage() for r in caplog.records if r.name == "learner.core"]

        with caplog.at_level(logging.WARNING, logger="learner.core"):
            joint, _ = core.device_micro_batches(unequal_batch)
            assert not ours() and all(mb.joint is not None for mb in joint)
            for _ in range(2):
                split, _ = core.device_micro_batches(broken)
        assert all(mb.joint is None for mb in split)
        assert len(ours()) == 1 and "two passes" in ours()[0]
    finally:
        core.close()


@pytest.mark.parametrize("variant", ["llama", "gemma2"])
def test_chunked_log_probs_equal_the_whole_vocabulary_pass(model_path, unequal_batch, variant):
    """Scoring the kept positions a few at a time (each chunk's logits recomputed in the backward pass instead of
    kept) gives the same log-probs and the same gradients as one pass over all of them, soft-capped head included."""
    from transformers import AutoModelForCausalLM

    from learner.batch import joint_inputs
    from learner.policy import PolicyLogprobs
    from tests.tiny_models import tiny_model

    joint = joint_inputs(unequal_batch)
    inputs, keep = joint.inputs, (joint.masks[0] + joint.inputs.action_mask) > 0
    assert int(keep.sum()) > 3 * 7  # several chunks of 7, the last one partial
    results = []
    for chunk in (None, 7):
        policy = PolicyLogprobs(AutoModelForCausalLM.from_pretrained(tiny_model(variant, model_path), dtype=torch.float32), chunk_positions=chunk)
        lp = policy(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, targets=inputs.targets, keep=keep, temperature=0.7)
        (-(lp * keep).sum() / keep.sum()).backward()
        results.append((lp.detach(), {n: p.grad.clone() for n, p in policy.model.named_parameters()}))
        with torch.no_grad():  # the no-grad pass (reference, old policy) chunks the same way
            assert torch.allclose(policy(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, targets=inputs.targets,
                                         keep=keep, temperature=0.7), lp.detach(), atol=1e-6)
    (whole, g_whole), (chunked, g_chunked) = results
    assert torch.allclose(chunked, whole, atol=1e-6)
    worst = max(float((g - g_whole[n]).norm() / g_whole[n].norm().clamp(min=1e-12)) for n, g in g_chunked.items())
    assert worst < 1e-4


def test_optimizer_states_offloaded_during_generation_come_back_intact(tiny_model_path, unequal_batch):
    """``learner.offload_states_during_generation`` (ZeRO-2): the states leave between updates and the next update
    reloads them; two updates with an offload between equal two updates without, bit for bit. (On a GPU the
    states move to CPU memory; here DeepSpeed's same code moves them between CPU buffers.)"""
    from learner.core import LearnerCore, LearnerSettings

    runs = []
    for offload in (False, True):
        core = LearnerCore(LearnerSettings(model_path=tiny_model_path, lr=1e-3, rows_per_micro_batch=2, rows_per_rank=4, k=2, dtype="float32"))
        try:
            first = core.update(unequal_batch, stage=2)
            if offload:
                core.offload_states()
                assert core.states_offloaded
            second = core.update(unequal_batch, stage=2)
            assert not core.states_offloaded
            runs.append((first, second, {n: p.detach().clone() for n, p in core.named_parameters()}))
        finally:
            core.close()
    (f0, s0, w0), (f1, s1, w1) = runs
    assert s0["loss"] != f0["loss"]  # the first update moved the policy
    assert (s1["loss"], s1["grad_norm"]) == (s0["loss"], s0["grad_norm"])
    assert all(torch.equal(w1[n], w0[n]) for n in w0)


def test_the_separate_reference_group_is_placed_or_refused_at_once(ray_local, tiny_model_path, unequal_batch):
    """``learner.reference_placement: separate``: the reference actors get a placement group of their own; they
    score a batch as the in-process scorer does, and a group that cannot be placed fails within its deadline,
    naming what it asked for, instead of waiting for ever. The tiny random model (placement mechanics)."""
    import time

    from learner.reference import ReferenceGroup, ReferenceScorer

    group = ReferenceGroup(tiny_model_path, num_actors=2, cpus=1, timeout_s=60, dtype="float32")
    try:
        scored = group.score(unequal_batch)
    finally:
        group.shutdown()
    want = ReferenceScorer(tiny_model_path, dtype="float32").score(unequal_batch)
    for column in ("a1_ref_logprobs", "a2_ref_logprobs"):
        for got, expected in zip(scored[column].to_pylist(), want[column].to_pylist()):
            assert got == pytest.approx(expected, abs=1e-5)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"could not place 1 reference actor\(s\) with \{'CPU': 64\} each within 2 s"):
        ReferenceGroup(tiny_model_path, num_actors=1, cpus=64, timeout_s=2, dtype="float32")
    assert time.monotonic() - start < 20
