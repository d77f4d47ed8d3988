"""Learner benchmark: the SCoRe update against a plain DeepSpeed forward/backward/step.

    python -m bench learner [--tiny]

Both run in this process on the same model, the same batch (the attempt-2 sequences, which
contain attempt 1) and the same ZeRO config; the learner core is built without Ray, as on a
lone device. The plain baseline computes a mean log-likelihood loss on the same tokens; the SCoRe
update also runs the frozen reference policy for the KL terms. Also reported: the time to gather
and pack the full weights for publishing, and, on a GPU, the model FLOPs utilisation.
"""

from __future__ import annotations

import time

import torch

from bench.common import BenchResult, Measurement


def _batch(model_path: str, problems: int, k: int):
    from tests.batches import build_batch

    base = [
        (f"Sam has {a} marbles and finds {b} more marbles. How many marbles does Sam have now?",
         [(f"Sam has {a} + {b} = {a + b + (j % 2)} marbles.", float(j % 2 == 0), f"Let me check: {a} + {b} = {a + b}. Sam has {a + b} marbles.", 1.0)
          for j in range(k)])
        for a, b in [(3 + p, 4 + 2 * p) for p in range(problems)]
    ]
    return build_batch(model_path, base)


def run(tiny: bool = False) -> BenchResult:
    import deepspeed

    from actors.weight_sync import SyncEndpoint, SyncGroup, free_port, plan_buckets, publish
    from cluster.model_prep import prepare_model
    from learner.batch import attempt_inputs
    from learner.core import LearnerCore, LearnerSettings, token_logprobs

    problems, k, steps = (2, 2, 1) if tiny else (4, 4, 3)
    model_path = prepare_model("embedded")
    batch = _batch(model_path, problems, k)
    rows = problems * k
    settings = LearnerSettings(model_path=model_path, lr=1e-6, rows_per_micro_batch=rows, rows_per_rank=rows, k=k,
                               threads_per_rank=torch.get_num_threads())
    core = LearnerCore(settings)
    if not tiny:
        core.update(batch, stage=2)  # warm-up
    start = time.perf_counter()
    tokens = 0
    for _ in range(steps):
        tokens += core.update(batch, stage=2)["tokens"]
    score_seconds = (time.perf_counter() - start) / steps
    score_rate = tokens / (score_seconds * steps)
    # the same update with two forward passes (attempt 1 and attempt 2 separately)
    core.settings.joint_forward = False
    if not tiny:
        core.update(batch, stage=2)
    start = time.perf_counter()
    for _ in range(steps):
        core.update(batch, stage=2)
    two_pass_seconds = (time.perf_counter() - start) / steps
    core.settings.joint_forward = True

    # plain DeepSpeed on the same sequences and config
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=core.dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config={
        "train_micro_batch_size_per_gpu": rows, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9})
    inputs = attempt_inputs(batch, "a2")

    def plain_step() -> int:
        lp = token_logprobs(engine, inputs, 1.0)
        loss = -(lp * inputs.action_mask).sum() / inputs.action_mask.sum()
        engine.backward(loss)
        engine.step()
        return inputs.num_tokens

    if not tiny:
        plain_step()
    start = time.perf_counter()
    tokens = sum(plain_step() for _ in range(steps))
    plain_rate = tokens / (time.perf_counter() - start)

    # gather + pack + broadcast the full weights (a group of one: the publisher's own cost)
    plan = plan_buckets(core.param_specs(), 64 << 20)
    group = SyncGroup(SyncEndpoint("127.0.0.1", free_port(), 1, "gloo"), 0)
    start = time.perf_counter()
    sent = publish(group, core.full_weights(plan), plan)
    publish_s = time.perf_counter() - start
    start = time.perf_counter()
    _ = [p.detach().clone() for _, p in core.named_parameters()]
    copy_s = time.perf_counter() - start

    result = BenchResult("learner", settings={"problems": problems, "k": k, "steps": steps, "zero_stage": 2, "ranks": 1,
                                              "threads": torch.get_num_threads()})
    result.measurements += [
        Measurement("SCoRe update tokens/s (incl. reference)", score_rate, "tok/s", "plain DeepSpeed fwd/bwd/step", plain_rate),
        Measurement("SCoRe update s/step, one pass for both attempts", score_seconds, "s", "two passes (attempt 1, attempt 2)",
                    two_pass_seconds, higher_is_better=False),
        Measurement(f"publish gather+pack s ({sent / 2**20:.0f} MiB)", publish_s, "s", "in-memory copy of the weights", copy_s, higher_is_better=False),
    ]
    if torch.cuda.is_available():
        params = sum(p.numel() for p in model.parameters())
        peak = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
        name = torch.cuda.get_device_name()
        flops = next((v for key, v in peak.items() if key in name), None)
        if flops:
            result.extra["mfu"] = 6 * params * score_rate / flops
    return result
