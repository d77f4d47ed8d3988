"""Learner benchmark: the SCoRe update in bf16 against float32, and against plain DeepSpeed doing the same work.

    python -m bench learner [--tiny]

Everything runs in this process on the same model and the same batch (the attempt-2 sequences,
which contain attempt 1), with the learner core built without Ray, as on a lone device.

- "learner tokens/s, bf16 vs float32": the SCoRe update (DeepSpeed bf16 with fp32 master weights
  against DeepSpeed float32);
- "SCoRe update vs DeepSpeed doing the same work": in the dtype ``auto`` picks on this machine,
  against a plain DeepSpeed engine (same ZeRO config and dtype) that runs, per step, a frozen
  reference forward and the policy forward+backward+step on the same length-sorted micro-batches
  with a mean log-likelihood loss. The difference is the SCoRe bookkeeping (advantages, KL, IS
  weight, metrics);
- the engine around :class:`learner.policy.PolicyLogprobs` (every pass through ``engine.forward``,
  which ZeRO-3 needs) against a plain engine around the Hugging Face model whose backbone and head
  are called past the engine (what the learner did before; correct on ZeRO-2 only), same loss: the
  cost of the wrapper;
- one pass for both attempts against two passes;
- the padded fraction of the computed positions;
- gathering and packing the full weights for publishing, against an in-memory copy.
On a GPU it also reports the model FLOPs utilisation.
"""

from __future__ import annotations

import time

import torch

from bench.common import BenchResult, Measurement


def _batch(model_path: str, problems: int, k: int, device: str):
    from tests.batches import build_batch

    base = [
        (f"Sam has {a} marbles and finds {b} more marbles. How many marbles does Sam have now?",
         [(f"Sam has {a} + {b} = {a + b + (j % 2)} marbles.", float(j % 2 == 0), f"Let me check: {a} + {b} = {a + b}. Sam has {a + b} marbles.", 1.0)
          for j in range(k)])
        for a, b in [(3 + p, 4 + 2 * p) for p in range(problems)]
    ]
    return build_batch(model_path, base, device=device)


def _head_pass(positions: int, hidden: int, vocab: int, chunk: int | None, gpu: bool) -> tuple[float, float]:
    """One forward+backward of the log-probs head on random ``[positions, hidden]`` states: (peak MiB above the
    start, seconds). CPU: the process's peak resident set (VmHWM, reset through /proc/self/clear_refs); GPU:
    torch's peak allocation."""
    from learner.policy import ChunkedHeadLogprobs, head_logprobs
    from common.memory import reset_peak_rss, status_mib

    device = torch.device("cuda" if gpu else "cpu")
    gen = torch.Generator(device="cpu").manual_seed(0)
    h = torch.randn(positions, hidden, generator=gen).to(device).requires_grad_(True)
    w = (0.02 * torch.randn(vocab, hidden, generator=gen)).to(device).requires_grad_(True)
    t = torch.randint(0, vocab, (positions,), generator=gen).to(device)

    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_mem = torch.cuda.memory_allocated() / 2**20
    else:
        reset_peak_rss()
        start_mem = status_mib("VmRSS")
    start = time.perf_counter()
    logp = ChunkedHeadLogprobs.apply(h, w, None, t, chunk, None, 1.0) if chunk else head_logprobs(torch.nn.functional.linear(h, w), t, None, 1.0)
    logp.sum().backward()
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else status_mib("VmHWM")
    return peak - start_mem, seconds


def _head_memory(positions: int, hidden: int, vocab: int, chunk: int, gpu: bool) -> dict[str, tuple[float, float]]:
    """Chunked against whole, each in a fresh process on CPU (freed memory stays mapped, so one process would
    show the second pass too little), in this one on GPU."""
    if gpu:
        return {name: _head_pass(positions, hidden, vocab, c, True) for name, c in (("whole", None), ("chunked", chunk))}
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return {name: pool.apply(_head_pass, (positions, hidden, vocab, c, False)) for name, c in (("whole", None), ("chunked", chunk))}


def run(tiny: bool = False, model_name: str = "embedded") -> BenchResult:
    """``model_name``: the embedded model, or any Hugging Face folder (e.g. a larger one, for a GPU's figures)."""
    import deepspeed
    from transformers import AutoModelForCausalLM

    from common.network import free_port
    from weight_sync.buckets import plan_buckets
    from weight_sync.transports import BroadcastTransport, SyncEndpoint
    from cluster.model_prep import prepare_model
    from common.devices import on_gpu, other_dtype, resolve_dtype
    from learner.core import LearnerCore, LearnerSettings, attempt_logprobs
    from learner.policy import PolicyLogprobs

    gpu = on_gpu()
    # a GPU gets a batch of the size it is built for (256 rows); the CPU one of a CPU iteration (16 rows)
    problems, k, steps = (1, 2, 1) if tiny else (32, 8, 3) if gpu else (4, 4, 3)
    model_path = prepare_model(model_name)
    batch = _batch(model_path, problems, k, "cuda" if gpu else "cpu")
    rows = problems * k
    micro = rows if tiny else rows // 2
    auto = resolve_dtype("auto")
    common = dict(model_path=model_path, lr=1e-6, rows_per_micro_batch=micro, rows_per_rank=rows, k=k, threads_per_rank=torch.get_num_threads())
    cores = {dtype: LearnerCore(LearnerSettings(**common, dtype=dtype)) for dtype in ("float32", "bfloat16")}
    core = cores[auto]

    # plain DeepSpeed doing the same work: reference forward + policy forward/backward/step, same micro-batches
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=core.dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ds_config = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": core.settings.gradient_accumulation_steps,
                 "gradient_clipping": 1.0, "zero_optimization": {"stage": 2}, "bf16": {"enabled": core.dtype == torch.bfloat16},
                 "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)
    engine.train()
    wrapped_model = PolicyLogprobs(AutoModelForCausalLM.from_pretrained(model_path, dtype=core.dtype))
    wrapped, *_ = deepspeed.initialize(model=wrapped_model, optimizer=torch.optim.AdamW(wrapped_model.parameters(), lr=1e-6), config=ds_config)
    wrapped.train()
    micros, padded = core.device_micro_batches(batch)

    def bypass_logprobs(mb) -> torch.Tensor:  # the Hugging Face model's pieces called past the engine
        inputs, sel = mb.joint, (mb.masks[0] + mb.masks[1]) > 0
        hidden = engine.module.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, use_cache=False).last_hidden_state
        logits = engine.module.lm_head(hidden[:, :-1][sel]).float()
        picked = logits.gather(-1, inputs.targets[sel].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        return torch.zeros(sel.shape, dtype=picked.dtype, device=picked.device).masked_scatter(sel, picked)

    def wrapper_logprobs(mb) -> torch.Tensor:
        inputs = mb.joint
        return wrapped(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, targets=inputs.targets, keep=(mb.masks[0] + mb.masks[1]) > 0)

    def likelihood_step(eng, logprobs, reference: bool = True) -> int:
        tokens = 0
        for mb in micros:
            if reference:
                with torch.no_grad():
                    attempt_logprobs(core.reference, mb, [1.0, 1.0])
            lp = logprobs(mb)
            mask = mb.masks[1]
            eng.backward(-(lp * mask).sum() / mask.sum())
            eng.step()
            tokens += mb.num_tokens
        return tokens

    def plain_step() -> int:
        return likelihood_step(engine, bypass_logprobs)

    def two_pass_step() -> int:
        core.settings.joint_forward = False
        try:
            return core.update(batch, stage=2)["tokens"]
        finally:
            core.settings.joint_forward = True

    # each contender runs once to warm up, then all take turns, step by step (these machines are noisy)
    contenders = {"float32": lambda: cores["float32"].update(batch, stage=2)["tokens"],
                  "bfloat16": lambda: cores["bfloat16"].update(batch, stage=2)["tokens"],
                  "plain": plain_step, "two_pass": two_pass_step,
                  "bypass": lambda: likelihood_step(engine, bypass_logprobs, reference=False),
                  "wrapper": lambda: likelihood_step(wrapped, wrapper_logprobs, reference=False)}
    seconds = {name: 0.0 for name in contenders}
    tokens = {name: 0 for name in contenders}
    for round_ in range(steps + (0 if tiny else 1)):
        for name, step in contenders.items():
            start = time.perf_counter()
            n = step()
            if tiny or round_ > 0:
                seconds[name] += time.perf_counter() - start
                tokens[name] += n
    rates = {name: tokens[name] / seconds[name] for name in contenders}
    score_seconds, two_pass_seconds = seconds[auto] / steps, seconds["two_pass"] / steps
    plain_rate = rates["plain"]
    cores.pop(other_dtype(auto)).close()

    # gather + pack + broadcast the full weights (a group of one: the publisher's own cost)
    plan = plan_buckets(core.param_specs(), 64 << 20)
    group = BroadcastTransport(SyncEndpoint("127.0.0.1", free_port(), 1, "nccl" if gpu else "gloo"), 0)
    start = time.perf_counter()
    sent = group.send(core.full_weights(plan), plan)
    publish_s = time.perf_counter() - start
    start = time.perf_counter()
    _ = [p.detach().clone() for _, p in core.named_parameters()]
    copy_s = time.perf_counter() - start

    # the head's memory: a micro-batch's action positions scored at once against learner.logprob_chunk_positions at a time
    head_shape = (1024, 576, 49152, 256) if tiny else (8192, 576, 49152, 2048) if not gpu else (16384, 3584, 152064, 2048)
    head = _head_memory(*head_shape, gpu=gpu)
    result = BenchResult("learner", settings={"problems": problems, "k": k, "steps": steps, "zero_stage": 2, "ranks": 1,
                                              "rows_per_micro_batch": micro, "threads": torch.get_num_threads(), "auto_dtype": auto,
                                              "model": model_name})
    result.measurements += [
        Measurement("learner tokens/s, bf16 vs float32", rates["bfloat16"], "tok/s", "float32 SCoRe update", rates["float32"]),
        Measurement(f"SCoRe update vs DeepSpeed doing the same work ({auto})", rates[auto], "tok/s",
                    "plain DeepSpeed: reference fwd + fwd/bwd/step", plain_rate),
        Measurement("SCoRe update s/step, one pass for both attempts", score_seconds, "s", "two passes (attempt 1, attempt 2)",
                    two_pass_seconds, higher_is_better=False),
        Measurement(f"policy fwd+bwd+step through the PolicyLogprobs engine vs the head called past the engine ({auto}, ZeRO-2)",
                    rates["wrapper"], "tok/s", "bypass (the learner before the wrapper)", rates["bypass"]),
        Measurement(f"head log-probs fwd+bwd peak MiB, {head_shape[3]} positions at a time ({head_shape[0]} positions x {head_shape[2]} vocab, "
                    f"hidden {head_shape[1]})", head["chunked"][0], "MiB", "all positions at once", head["whole"][0], higher_is_better=False),
        Measurement("head log-probs fwd+bwd seconds, chunked (recomputed in backward)", head["chunked"][1], "s", "all positions at once",
                    head["whole"][1], higher_is_better=False),
        Measurement(f"useful (non-padding) share of computed positions (padded {padded:.1%})", 1.0 - padded, "", "no padding", 1.0),
        Measurement(f"publish gather+pack s ({sent / 2**20:.0f} MiB, {auto})", publish_s, "s", "in-memory copy of the weights", copy_s,
                    higher_is_better=False),
    ]
    result.extra = {"head_memory": {"shape": dict(zip(("positions", "hidden", "vocab", "chunk"), head_shape)), **head},
                    "tokens_per_second": rates, "seconds_per_step": {n: v / steps for n, v in seconds.items()}, "padded_fraction": padded}
    params = sum(p.numel() for p in model.parameters())
    core.close()
    engine.destroy()
    wrapped.destroy()
    del engine, model, opt, wrapped, wrapped_model
    if torch.cuda.is_available():
        peak = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
        name = torch.cuda.get_device_name()
        flops = next((v for key, v in peak.items() if key in name), None)
        if flops:
            result.extra["mfu"] = 6 * params * rates[auto] / flops
    return result
