"""The learner group: N Ray actors (``learner-rank-j``), one per device, forming one
``torch.distributed`` world around :class:`learner.core.LearnerCore`.

Rank 0 picks a free address and port on its node and the other ranks join it. Every call that
touches DeepSpeed goes to all ranks together (collectives need everyone). The group also
publishes weights to the generators: rank 0 is rank 0 of the weight-sync group, and under
ZeRO-3 all ranks take part in gathering each bucket.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from learner.core import LearnerCore, LearnerSettings


class LearnerError(RuntimeError):
    """A learner rank failed or timed out; the iteration cannot complete (resume from a checkpoint)."""


@ray.remote(max_restarts=0, max_task_retries=0)
class LearnerRank:
    """One learner rank as a Ray actor."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self.core: LearnerCore | None = None
        self.sync_group = None
        self.shared = None  # colocated mode: this rank's shared bucket buffers

    def placement(self) -> dict[str, Any]:
        """Where Ray put this actor: node, placement group and resources (colocation checks, debugging)."""
        from actors.weight_sync import actor_placement

        return actor_placement()

    def address(self) -> tuple[str, int]:
        from actors.weight_sync import free_port, node_ip

        return node_ip(), free_port()

    def setup(self, settings: LearnerSettings, master_addr: str, master_port: int) -> bool:
        import os

        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        self.core = LearnerCore(settings, self.rank, self.world_size, master_addr, master_port)
        return True

    def update(self, shard: pa.Table, stage: int) -> dict[str, float]:
        return self.core.update(shard, stage)

    def sequence_logprob(self, shard: pa.Table, prefix: str = "a1") -> list[float]:
        return self.core.sequence_logprob(shard, prefix)

    def weight_plan(self, bucket_bytes: int) -> list:
        from actors.weight_sync import plan_buckets, plan_to_wire

        return plan_to_wire(plan_buckets(self.core.param_specs(), bucket_bytes))

    def join_sync_group(self, host: str, port: int, world_size: int, backend: str, timeout_s: float = 300.0) -> bool:
        from actors.weight_sync import SyncEndpoint, SyncGroup

        if self.rank == 0:
            self.sync_group = SyncGroup(SyncEndpoint(host, port, world_size, backend, timeout_s), 0)
        return True

    def publish(self, wire_plan: list) -> int:
        """Rank 0 broadcasts; under ZeRO-3 every rank iterates to take part in the gathers."""
        from actors.weight_sync import plan_from_wire, publish

        plan = plan_from_wire(wire_plan)
        weights = self.core.full_weights(plan)
        if self.rank == 0:
            return publish(self.sync_group, weights, plan)
        for _ in weights:
            pass
        return 0

    def host_shared(self, wire_plan: list, timeout_s: float = 300.0) -> tuple[str, int]:
        """Colocated mode: allocate this rank's shared bucket buffers on its device; returns the store's address."""
        import torch

        from actors.weight_sync import SharedBuckets, SyncEndpoint, free_port, node_ip, plan_from_wire, shared_capacity

        if self.shared is not None:
            self.shared.close()
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        host, port = node_ip(), free_port()
        capacity = shared_capacity(plan_from_wire(wire_plan))
        self.shared = SharedBuckets(SyncEndpoint(host, port, 2, "shared", timeout_s), is_publisher=True, capacity=capacity, device=device)
        return host, port

    def publish_shared(self, wire_plan: list) -> int:
        """Colocated mode: every rank packs the full weights into its own generator's shared buffers."""
        from actors.weight_sync import plan_from_wire, publish_shared

        plan = plan_from_wire(wire_plan)
        return publish_shared(self.shared, self.core.full_weights(plan), plan)

    def full_state(self) -> dict[str, Any]:
        """Rank 0: the full policy weights on CPU (for tests and small models only)."""
        from actors.weight_sync import plan_buckets

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
        self._get([r.setup.remote(settings, host, port) for r in self.ranks], "learner ranks starting DeepSpeed")
        self._plan: list | None = None
        self.sync_members: tuple | None = None  # generators in the current sync group (or shared channels)

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

    def update(self, batch: pa.Table, stage: int) -> dict[str, float]:
        """One update on all ranks; returns metrics averaged over ranks (token counts summed)."""
        results = self._get([r.update.remote(s, stage) for r, s in zip(self.ranks, self.shards(batch))], f"the stage {stage} update")
        merged = {k: sum(m[k] for m in results) / len(results) for k in results[0]}
        merged["tokens"] = sum(m["tokens"] for m in results)
        merged["tokens_per_second"] = merged["tokens"] / max(max(m["seconds"] for m in results), 1e-9)
        return merged

    def sequence_logprob(self, batch: pa.Table, prefix: str = "a1") -> list[float]:
        out = self._get([r.sequence_logprob.remote(s, prefix) for r, s in zip(self.ranks, self.shards(batch))], "log-probs")
        return [x for part in out for x in part]

    def full_state(self) -> dict[str, Any]:
        return self._get([r.full_state.remote() for r in self.ranks], "gathering full weights")[0]

    def publish_to(self, fleet, version: int, bucket_bytes: int, backend: str | None = None) -> dict[str, Any]:
        """Stream the full weights to every generator of ``fleet`` and tag them with ``version``."""
        import time

        from actors.weight_sync import plan_from_wire

        backend = backend or ("nccl" if fleet.settings.gpus else "gloo")
        start = time.monotonic()
        if self._plan is None:
            self._plan = self._get([self.ranks[0].weight_plan.remote(bucket_bytes)], "the weight plan")[0]
        if fleet.settings.colocated:
            return self._publish_shared(fleet, version, start)
        if self.sync_members is None or fleet.needs_new_group():
            host, port = self._get([self.ranks[0].address.remote()], "a sync address")[0]
            gen_refs = fleet.join_refs(host, port, backend)
            world = fleet.group_world_size(len(fleet.members))
            learner_ref = self.ranks[0].join_sync_group.remote(host, port, world, backend)
            fleet.wait(gen_refs, 300, "generators joining the weight-sync group")
            self._get([learner_ref], "learner rank 0 joining the weight-sync group", 300)
            self.sync_members = fleet.members
        recv = fleet.receive_refs(self._plan, version)
        sent = self._get([r.publish.remote(self._plan) for r in self.ranks], "publishing weights")[0]
        reports = fleet.finish_sync(recv, version)
        plan = plan_from_wire(self._plan)
        return {"seconds": time.monotonic() - start, "bytes": sent, "buckets": len(plan), "generators": len(reports), "version": version}

    def _publish_shared(self, fleet, version: int, start: float) -> dict[str, Any]:
        """Colocated mode: rank j fills generator j's shared buffers (CUDA IPC on a GPU, shared memory on CPU)."""
        import time

        from actors.weight_sync import plan_from_wire

        if self.sync_members is None or fleet.needs_new_group():
            endpoints = self._get([r.host_shared.remote(self._plan) for r in self.ranks], "learner ranks sharing their bucket buffers")
            fleet.wait(fleet.join_shared_refs(endpoints), 300, "generators opening the learner's shared buffers")
            self.sync_members = fleet.members
        recv = fleet.receive_shared_refs(self._plan, version)
        sent = self._get([r.publish_shared.remote(self._plan) for r in self.ranks], "publishing weights through shared buffers")
        reports = fleet.finish_sync(recv, version)
        plan = plan_from_wire(self._plan)
        return {"seconds": time.monotonic() - start, "bytes": sent[0], "buckets": len(plan), "generators": len(reports), "version": version,
                "transport": "cuda-ipc" if fleet.settings.gpus else "shared-memory"}

    def save(self, directory: str, client_state: dict[str, Any]) -> None:
        self._get([r.save.remote(directory, client_state) for r in self.ranks], f"saving a checkpoint to {directory}")

    def load(self, directory: str) -> dict[str, Any]:
        return self._get([r.load.remote(directory) for r in self.ranks], f"loading {directory}")[0]

    def export_hf(self, directory: str) -> str:
        return self._get([r.export_hf.remote(directory) for r in self.ranks], f"exporting to {directory}")[0]

    def kill_rank(self, j: int) -> None:
        ray.kill(self.ranks[j], no_restart=True)

    def shutdown(self) -> None:
        for r in self.ranks:
            try:
                ray.kill(r, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self.owns_pg:
            remove_placement_group(self.pg)
