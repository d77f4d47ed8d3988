"""The reference policy in its own actor group (``learner.reference_placement: separate``).

A frozen copy of the initial weights that scores rollout batches: it adds ``a1_ref_logprobs``,
``a2_ref_logprobs`` ... (one per attempt; one value per response token, like the sampling log-probs) so the learner
ranks need not hold a second model. With ``reference_placement: learner`` (the default) each
learner rank keeps the copy itself and nothing here is used.
"""

from __future__ import annotations

import pyarrow as pa
import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from common.devices import on_gpu, torch_dtype
from common.teardown import tear_down
from learner.batch import attempt_inputs, attempt_prefixes, joint_inputs, response_values
from learner.core import _take, token_logprobs
from learner.policy import PolicyLogprobs


class ReferenceScorer:
    """Owns one frozen reference model and turns a batch into reference log-prob columns."""

    def __init__(self, model_path: str, dtype: str = "auto", temperature1: float = 1.0, temperature2: float = 1.0, threads: int | None = None,
                 chunk_positions: int | None = 2048):
        from transformers import AutoModelForCausalLM  # heavy: loaded by the reference actors only

        gpu = on_gpu()
        if not gpu and threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda") if gpu else torch.device("cpu")
        self.model = PolicyLogprobs(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(dtype, gpu)), chunk_positions).to(self.device).eval()
        self.t1, self.t2 = temperature1, temperature2

    @torch.no_grad()
    def score(self, table: pa.Table, rows_per_pass: int = 8) -> pa.Table:
        prefixes = attempt_prefixes(table)
        temperatures = [self.t1] + [self.t2] * (len(prefixes) - 1)
        joint = joint_inputs(table) if len(set(temperatures)) == 1 else None
        out: list[list[list[float]]] = [[] for _ in prefixes]
        for start in range(0, table.num_rows, rows_per_pass):
            rows = range(start, min(start + rows_per_pass, table.num_rows))
            sub = table.slice(rows.start, len(rows))
            if joint is not None:
                lps = [token_logprobs(self.model, _take(joint.inputs, rows, self.device), temperatures[-1]).float().cpu()] * len(prefixes)
            else:
                lps = [token_logprobs(self.model, _take(attempt_inputs(sub, a), range(0, len(rows)), self.device), t).float().cpu()
                       for a, t in zip(prefixes, temperatures)]
            for a, lp, col in zip(prefixes, lps, out):
                xs, ys = sub[f"{a}_prompt_ids"].to_pylist(), sub[f"{a}_response_ids"].to_pylist()
                col.extend(response_values(lp[i], len(xs[i]), len(ys[i])) for i in range(len(rows)))
        for a, col in zip(prefixes, out):
            table = table.append_column(f"{a}_ref_logprobs", pa.array(col, pa.list_(pa.float32())))
        return table


@ray.remote(max_restarts=-1, max_task_retries=2)
class ReferenceWorker(ReferenceScorer):
    """A :class:`ReferenceScorer` as a Ray actor (``reference-i``); scoring is pure, so retries are safe."""


class ReferenceGroup:
    """Owns the reference actors and shards a batch over them."""

    def __init__(self, model_path: str, num_actors: int = 1, gpus: bool = False, cpus: float = 1.0, timeout_s: float = 1800.0, **kwargs):
        """The actors go into a placement group of their own (one GPU each on a GPU cluster), which must be placed within
        ``timeout_s``: the error then names what could not be had, instead of an actor waiting for ever for a GPU
        that every other placement group holds."""
        bundle = {"GPU": 1, "CPU": 1} if gpus else {"CPU": cpus}
        self.pg = placement_group([dict(bundle) for _ in range(num_actors)], strategy="PACK")
        try:
            ray.get(self.pg.ready(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.pg)
            raise RuntimeError(f"could not place {num_actors} reference actor(s) with {bundle} each within {timeout_s:.0f} s: "
                               "not enough free resources beside the learner and the generators") from None
        self.actors = [ReferenceWorker.options(name=f"reference-{i}", num_gpus=bundle.get("GPU", 0), num_cpus=bundle["CPU"],
                                               scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
                                               ).remote(model_path, **kwargs) for i in range(num_actors)]
        self.timeout_s = timeout_s

    def score(self, batch: pa.Table) -> pa.Table:
        n = len(self.actors)
        bounds = [round(i * batch.num_rows / n) for i in range(n + 1)]
        refs = [a.score.remote(batch.slice(bounds[i], bounds[i + 1] - bounds[i])) for i, a in enumerate(self.actors) if bounds[i + 1] > bounds[i]]
        try:
            parts = ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(f"timed out after {self.timeout_s:.0f} s waiting for the reference group to score a batch") from None
        return pa.concat_tables(parts)

    def shutdown(self) -> None:
        tear_down(self.actors, self.pg)
