"""Generation benchmark: generator actors against a bare ``vllm.LLM``, and weight-sync cost.

    python -m bench generation [--tiny]

- generated tokens/s of bare engines in bf16 against float32, and the log-prob mismatch between
  vLLM and transformers in each dtype (temperature 0.7);
- generated tokens/s of the generator actor (Ray call, token-id prompts, log-probs, pyarrow batch)
  against a bare ``vllm.LLM`` built the same way in this process, on identical prompts and greedy
  sampling (so both produce the same tokens);
- seconds to publish the full model to the generator through the sync group, against copying the
  same bytes in memory in this process;
- the effect of the bucket size on the publish time;
- the colocated transport (two shared bucket buffers that the vLLM worker opens; CUDA IPC on a
  GPU, shared memory on CPU) against the same copy;
- the broadcast sync with the in-place load (the default) against the same sync into an engine
  that loads through vLLM's layerwise reload (``rollout.sync_load: reload``).
"""

from __future__ import annotations

import gc
import statistics
import time

import pyarrow as pa
import torch

from bench.common import BenchResult, Measurement


def _prompts(n: int):
    from rewards.tasks.arithmetic import ArithmeticTask

    task = ArithmeticTask(difficulty=2, train_size=10, eval_size=n, seed=0)
    return task, [{"uid": p.uid, "problem_index": i, "messages": task.first_turn(p)} for i, p in enumerate(task.problems("eval"))]


def run(tiny: bool = False, model_name: str = "embedded") -> BenchResult:
    """``model_name``: the embedded model, or any Hugging Face folder."""
    import ray
    from transformers import AutoModelForCausalLM

    from actors.engine import make_llm
    from actors.fleet import FleetSettings, GeneratorFleet
    from actors.prompts import ChatFormatter
    from weight_sync.manager import LocalSource, WeightSync
    from cluster.model_prep import prepare_model
    from common.devices import resolve_dtype

    n_prompts, max_tokens, repeats = (4, 8, 1) if tiny else (64, 64, 3)
    buckets_mb = [16, 64] if tiny else [4, 16, 64, 256]
    model_path = prepare_model(model_name)
    task, items = _prompts(n_prompts)
    result = BenchResult("generation", settings={"prompts": n_prompts, "max_tokens": max_tokens, "repeats": repeats, "buckets_mb": buckets_mb,
                                                 "model": model_name})
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    kv = {"cpu_kv_cache_gb": 0.5, "max_model_len": 1024}

    # --- the generator actor -------------------------------------------------------------
    auto = resolve_dtype("auto")
    fleet = GeneratorFleet(model_path, FleetSettings(num_generators=1, engine_kwargs={**kv, "dtype": auto}, namespace_prefix="bench-generator"))
    try:
        fleet.first_attempts(items[:2], 1, {"temperature": 0.0, "max_tokens": 4})  # warm-up
        actor_rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            table = fleet.first_attempts(items, 1, {"temperature": 0.0, "max_tokens": max_tokens})
            actor_rates.append(sum(table["a1_length"].to_pylist()) / (time.perf_counter() - start))
        actor_tokens = table["a1_response_ids"].to_pylist()

        # --- weight sync against an in-memory copy of the same bytes ------------------------
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, auto))  # the generator's dtype on the wire
        weights = {n: p.detach() for n, p in model.named_parameters()}
        nbytes = sum(t.numel() * t.element_size() for t in weights.values())
        copies = []
        for _ in range(3):
            start = time.perf_counter()
            _ = [t.clone() for t in weights.values()]
            copies.append(time.perf_counter() - start)
        copy_s = min(copies)
        version, by_bucket = 0, {}

        def timed_pushes(manager):  # the first push builds the transport; the rest are what a run pays per iteration
            nonlocal version
            times = []
            try:
                for _ in range(1 + max(1, repeats - 1)):
                    version += 1
                    report = manager.push(version)
                    times.append(report["seconds"])
            finally:
                manager.shutdown()
            return min(times[1:]), report["buckets"]

        for mb in buckets_mb:
            seconds, buckets = timed_pushes(WeightSync(LocalSource(lambda: iter(weights.items())), fleet, mb << 20))
            by_bucket[mb] = {"seconds": seconds, "buckets": buckets}
        best_mb = min(by_bucket, key=lambda m: by_bucket[m]["seconds"])

        # --- colocated transport: shared bucket buffers (CUDA IPC on a GPU, shared memory here) ---
        shared_times = [timed_pushes(WeightSync(LocalSource(lambda: iter(weights.items())), fleet, best_mb << 20, backend="shared"))[0]]
        shared_s = min(shared_times)
    finally:
        fleet.shutdown()
        del fleet
        gc.collect()

    # --- the same broadcast sync into an engine that loads through vLLM's layerwise reload (one mode per engine) ---
    fleet = GeneratorFleet(model_path, FleetSettings(num_generators=1, engine_kwargs={**kv, "dtype": auto}, namespace_prefix="bench-reload"))
    try:
        reload_s, _ = timed_pushes(WeightSync(LocalSource(lambda: iter(weights.items())), fleet, best_mb << 20, load="reload"))
    finally:
        fleet.shutdown()
        del fleet
        gc.collect()

    # --- bare vLLM engines in this process, same prompts and sampling, in both dtypes -------------
    # For each dtype: greedy tokens/s, and the log-prob mismatch against transformers in the same dtype
    # on tokens sampled at temperature 0.7 (what the learner's mismatch metric measures in training).
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from learner.batch import attempt_inputs
    from learner.core import token_logprobs
    from learner.policy import PolicyLogprobs
    from learner.objectives import logprob_mismatch

    bare_rates: dict[str, list[float]] = {}
    mismatch: dict[str, dict[str, float]] = {}
    same_tokens = None
    for dtype in ("float32", "bfloat16"):
        llm = make_llm(model_path, dtype=dtype, logprobs_mode="processed_logprobs", **kv)
        fmt = ChatFormatter(llm.get_tokenizer())
        prompt_ids = [fmt.first_prompt_ids(it["messages"]) for it in items]
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0)
        llm.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
        bare_rates[dtype] = []
        for _ in range(repeats):
            start = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            bare_rates[dtype].append(sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - start))
        if dtype == auto:
            same_tokens = [list(o.outputs[0].token_ids) for o in outs] == actor_tokens
        sampled = llm.generate(prompts, SamplingParams(temperature=0.7, max_tokens=max_tokens, logprobs=0), use_tqdm=False)
        del llm
        gc.collect()
        rows = []
        for ids, o in zip(prompt_ids, sampled):
            out = o.outputs[0]
            rows.append({"a1_prompt_ids": ids, "a1_response_ids": list(out.token_ids),
                         "a1_logprobs": [float(step[t].logprob) for step, t in zip(out.logprobs, out.token_ids)]})
        inputs = attempt_inputs(pa.Table.from_pylist(rows), "a1")
        hf = PolicyLogprobs(AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))).eval()
        with torch.no_grad():
            lp = token_logprobs(hf, inputs, 0.7)
        mismatch[dtype] = logprob_mismatch(lp, inputs.old_logp, inputs.action_mask)
        del hf
    if started_ray:
        ray.shutdown()

    result.measurements += [
        Measurement("generation tokens/s, bf16 vs float32", statistics.median(bare_rates["bfloat16"]), "tok/s",
                    "bare vllm.LLM float32, same prompts", statistics.median(bare_rates["float32"])),
        Measurement(f"generator actor tokens/s ({auto})", statistics.median(actor_rates), "tok/s", f"bare vllm.LLM {auto}, same prompts",
                    statistics.median(bare_rates[auto])),
        Measurement("log-prob mismatch mean |vLLM - learner|, bf16 vs float32", mismatch["bfloat16"]["mean_abs"], "nats",
                    "float32", mismatch["float32"]["mean_abs"], higher_is_better=False),
        Measurement(f"weight sync s ({nbytes / 2**20:.0f} MiB, {best_mb} MiB buckets)", by_bucket[best_mb]["seconds"], "s",
                    "in-memory copy of the same bytes", copy_s, higher_is_better=False),
        Measurement(f"colocated sync s (shared buffers, {best_mb} MiB buckets)", shared_s, "s",
                    "in-memory copy of the same bytes", copy_s, higher_is_better=False),
        Measurement(f"weight sync s, in-place load vs vLLM reload ({best_mb} MiB buckets)", by_bucket[best_mb]["seconds"], "s",
                    "rollout.sync_load=reload, same transport", reload_s, higher_is_better=False),
    ]
    result.extra = {"identical_greedy_tokens": same_tokens, "dtype": auto, "logprob_mismatch_T0.7": mismatch, "sync_by_bucket_mb": by_bucket, "bytes": nbytes,
                    "colocated_sync_seconds": shared_times, "reload_sync_seconds": reload_s, "actor_rates": actor_rates, "bare_rates": bare_rates}
    return result
