"""The learner group: N Ray actors (``learner-rank-j``), one per device, forming one
``torch.distributed`` world around :class:`learner.core.LearnerCore`.

Rank 0 picks a free address and port on its node and the other ranks join it. Every call that
touches DeepSpeed goes to all ranks together (collectives need everyone). The group is the source
of weight syncs (:class:`weight_sync.manager.WeightSource`): it yields full tensors bucket by
bucket (under ZeRO-3 all ranks take part in gathering each one) into a :class:`weight_sync.sender`
transport, rank 0's for the broadcast, every rank's own when colocated; it knows nothing of the
generators.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from common.logs import setup_logging
from common.network import actor_placement, free_port, node_ip
from common.teardown import tear_down
from learner.core import LearnerCore, LearnerSettings
from weight_sync.buckets import WirePlan, largest_bucket_bytes, plan_buckets, plan_from_wire, plan_to_wire
from weight_sync.sender import WeightSender
from weight_sync.transports import SHARED, SyncEndpoint


class LearnerError(RuntimeError):
    """A learner rank failed or timed out; the iteration cannot complete (resume from a checkpoint)."""


@ray.remote(max_restarts=0, max_task_retries=0)
class LearnerRank:
    """One learner rank as a Ray actor."""

    def __init__(self, rank: int, world_size: int):
        setup_logging()  # this worker's messages at the driver's level ($SCORE_LOG_LEVEL)
        self.rank, self.world_size = rank, world_size
        self.core: LearnerCore | None = None
        self.sender = WeightSender()

    def placement(self) -> dict[str, Any]:
        """Where Ray put this actor: node, placement group and resources (colocation checks, debugging)."""
        return actor_placement()

    def address(self) -> tuple[str, int]:
        return node_ip(), free_port()

    def setup(self, settings: LearnerSettings, master_addr: str, master_port: int, expect_gpu: bool | None = None) -> bool:
        """``expect_gpu``: the stack the driver chose; a rank that sees otherwise refuses in one line."""
        if expect_gpu is not None and expect_gpu != torch.cuda.is_available():
            raise RuntimeError(f"learner rank {self.rank}: the driver chose the {'GPU' if expect_gpu else 'CPU'} stack, but this actor "
                               f"{'sees no CUDA device' if expect_gpu else 'sees a CUDA device'} (run.device)")
        # a NCCL collective that times out (DeepSpeed's, the weight broadcast's) raises in the waiting thread
        # instead of tearing the process down (torch's default, 3): the driver then reports or retries it
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        self.core = LearnerCore(settings, self.rank, self.world_size, master_addr, master_port)
        return True

    def update(self, shard: pa.Table, stage: int, beta2: float | None = None) -> dict[str, float]:
        return self.core.update(shard, stage, beta2)

    def sequence_logprob(self, shard: pa.Table, prefix: str = "a1") -> list[float]:
        return self.core.sequence_logprob(shard, prefix)

    def weight_plan(self, bucket_bytes: int) -> WirePlan:
        return plan_to_wire(plan_buckets(self.core.param_specs(), bucket_bytes))

    def join_weights(self, endpoint: SyncEndpoint) -> bool:
        """Broadcast: rank 0 opens the sending end of the group (the others only help gather under ZeRO-3)."""
        if self.rank == 0:
            self.sender.open(endpoint)
        return True

    def host_weights(self, wire_plan: WirePlan, timeout_s: float) -> tuple[str, int]:
        """Colocated: allocate this rank's shared bucket buffers on its device; returns the store's address."""
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        endpoint = SyncEndpoint(node_ip(), free_port(), 2, SHARED, timeout_s)
        self.sender.open(endpoint, capacity=largest_bucket_bytes(plan_from_wire(wire_plan)), device=device)
        return endpoint.host, endpoint.port

    def send_weights(self, wire_plan: WirePlan) -> int:
        """Every rank gathers (ZeRO-3 needs all); ranks with a transport send. Returns the bytes this rank sent."""
        plan = plan_from_wire(wire_plan)
        sent = self.sender.send(self.core.full_weights(plan), plan)
        self.core.release_cache()  # ZeRO-3's gathered buckets: back to the driver before the generators wake
        return sent

    def offload_states(self) -> bool:
        self.core.offload_states()
        return True

    def close_weights(self) -> bool:
        self.sender.close()
        return True

    def full_state(self) -> dict[str, Any]:
        """Rank 0: the full policy weights on CPU (for tests and small models only)."""
        plan = plan_buckets(self.core.param_specs(), 256 << 20)
        state = {n: t.detach().cpu().clone() for n, t in self.core.full_weights(plan)}
        return state if self.rank == 0 else {}

    def save(self, directory: str, client_state: dict[str, Any]) -> bool:
        self.core.save(directory, client_state)
        return True

    def load(self, directory: str) -> dict[str, Any]:
        return self.core.load(directory)

    def export_hf(self, directory: str) -> str | None:
        return self.core.export_hf(directory)


class LearnerGroup:
    """Owns the learner ranks, their placement group, and the driver-side calls into them."""

    def __init__(self, settings: LearnerSettings, num_ranks: int, gpus: bool = False, cpus_per_rank: float = 1.0,
                 timeout_s: float = 1800.0, name_prefix: str = "learner-rank", pg=None, gpu_share: float = 1.0):
        """``pg``: a placement group shared with colocated generators (bundle j holds rank j and
        generator j, each taking ``gpu_share`` of the bundle's GPU); by default the group owns its own."""
        self.settings, self.num_ranks, self.timeout_s = settings, num_ranks, timeout_s
        bundle = {"GPU": gpu_share, "CPU": 1} if gpus else {"CPU": cpus_per_rank}
        self.owns_pg = pg is None
        if pg is None:
            pg = placement_group([{"GPU": 1, "CPU": 1} if gpus else dict(bundle) for _ in range(num_ranks)], strategy="PACK")
        self.pg = pg
        try:
            ray.get(self.pg.ready(), timeout=timeout_s)
        except GetTimeoutError:
            if self.owns_pg:
                remove_placement_group(self.pg)
            raise LearnerError(f"could not place {num_ranks} learner ranks with {bundle} each: not enough free resources") from None
        self.names = [f"{name_prefix}-{j}" for j in range(num_ranks)]
        self.ranks = [
            LearnerRank.options(
                name=name, num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0),
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=j),
            ).remote(j, num_ranks)
            for j, name in enumerate(self.names)
        ]
        host, port = self._get([self.ranks[0].address.remote()], "learner rank 0's address")[0]
        self._get([r.setup.remote(settings, host, port, gpus) for r in self.ranks], "learner ranks starting DeepSpeed")

    def _get(self, refs: list, what: str, timeout_s: float | None = None) -> list:
        try:
            return ray.get(refs, timeout=timeout_s or self.timeout_s)
        except GetTimeoutError:
            raise LearnerError(f"timed out after {timeout_s or self.timeout_s:.0f} s waiting for {what}") from None
        except RayActorError as err:
            raise LearnerError(f"a learner rank died while {what}: {err.__class__.__name__}; resume from the last checkpoint") from None

    def shards(self, batch: pa.Table) -> list[pa.Table]:
        per = self.settings.rows_per_rank
        if batch.num_rows != per * self.num_ranks:
            raise LearnerError(f"batch has {batch.num_rows} rows; the group was built for {per} per rank x {self.num_ranks}")
        return [batch.slice(j * per, per) for j in range(self.num_ranks)]

    def update(self, batch: pa.Table, stage: int, beta2: float | None = None) -> dict[str, float]:
        """One update on all ranks (``beta2``: this update's attempt-1 KL weight, where adapted);
        returns metrics averaged over ranks (token counts summed)."""
        results = self._get([r.update.remote(s, stage, beta2) for r, s in zip(self.ranks, self.shards(batch))], f"the stage {stage} update")
        merged = {k: sum(m[k] for m in results) / len(results) for k in results[0]}
        merged["tokens"] = sum(m["tokens"] for m in results)
        merged["tokens_per_second"] = merged["tokens"] / max(max(m["seconds"] for m in results), 1e-9)
        return merged

    def sequence_logprob(self, batch: pa.Table, prefix: str = "a1") -> list[float]:
        out = self._get([r.sequence_logprob.remote(s, prefix) for r, s in zip(self.ranks, self.shards(batch))], "log-probs")
        return [x for part in out for x in part]

    def full_state(self) -> dict[str, Any]:
        return self._get([r.full_state.remote() for r in self.ranks], "gathering full weights")[0]

    def offload_states(self) -> None:
        """Every rank's optimizer states to CPU memory until its next update (which reloads them)."""
        self._get([r.offload_states.remote() for r in self.ranks], "learner ranks offloading their optimizer states")

    # -- the weight-sync source (weight_sync.manager.WeightSource) ------------------------------
    def _pending(self, refs: list, what: str):
        def wait(timeout_s: float):
            try:
                return ray.get(refs, timeout=timeout_s)
            except GetTimeoutError:
                raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}") from None
            except RayActorError as err:
                raise LearnerError(f"a learner rank died while {what}: {err.__class__.__name__}; resume from the last checkpoint") from None
        return wait

    def wire_plan(self, bucket_bytes: int) -> WirePlan:
        return self._get([self.ranks[0].weight_plan.remote(bucket_bytes)], "the weight plan")[0]

    def address(self) -> tuple[str, int]:
        return self._get([self.ranks[0].address.remote()], "a sync address")[0]

    def start_open(self, endpoint: SyncEndpoint):
        return self._pending([self.ranks[0].join_weights.remote(endpoint)], "learner rank 0 joining the weight-sync group")

    def host_shared(self, wire_plan: WirePlan, timeout_s: float, count: int) -> list[tuple[str, int]]:
        if count != self.num_ranks:
            raise LearnerError(f"colocated weight sync pairs each of the {self.num_ranks} learner ranks with one generator, not {count}")
        return self._get([r.host_weights.remote(wire_plan, timeout_s) for r in self.ranks], "learner ranks sharing their bucket buffers", timeout_s)

    def start_send(self, wire_plan: WirePlan):
        pending = self._pending([r.send_weights.remote(wire_plan) for r in self.ranks], "the learner sending weights")
        return lambda timeout_s: max(pending(timeout_s))  # the bytes one generator receives

    def close_transport(self) -> None:
        self._get([r.close_weights.remote() for r in self.ranks], "learner ranks closing their weight transport", 60)

    def save(self, directory: str, client_state: dict[str, Any]) -> None:
        self._get([r.save.remote(directory, client_state) for r in self.ranks], f"saving a checkpoint to {directory}")

    def load(self, directory: str) -> dict[str, Any]:
        return self._get([r.load.remote(directory) for r in self.ranks], f"loading {directory}")[0]

    def export_hf(self, directory: str) -> str:
        return self._get([r.export_hf.remote(directory) for r in self.ranks], f"exporting to {directory}")[0]

    def kill_rank(self, j: int) -> None:
        ray.kill(self.ranks[j], no_restart=True)

    def shutdown(self) -> None:
        tear_down(self.ranks, self.pg if self.owns_pg else None)
