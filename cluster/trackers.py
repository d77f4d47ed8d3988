"""The experiment trackers a run's numbers go to (``run.loggers``): metrics.jsonl, TensorBoard, the console,
Weights & Biases and MLflow.

Invariants:

- Only the driver builds trackers (:class:`cluster.run_log.RunLog`, in the trainer): a run with many
  generator and learner actors opens one W&B run and one MLflow run. Workers send their numbers to the
  driver, as every metric already does.
- Every tracker gets the same calls, from RunLog only: :meth:`Tracker.start` (the resolved config and the
  machine record), :meth:`Tracker.log` (one record: ``kind`` train or eval, the iteration, its values, phase
  times included), :meth:`Tracker.finish` (the final table, ``plot.png``, the evaluated samples). The trainer
  knows nothing of which trackers exist.
- Metric names are ``<namespace>/<key>``: ``train/...``, ``eval/...`` for the periodic evaluations and
  ``eval_base/...``, ``eval_final/...`` for the evaluations before and after training, on the iteration axis.
- A resumed run continues the same W&B and MLflow run: their ids live in ``<run_dir>/trackers.json``, with
  the last step each namespace sent. Resume drops metrics.jsonl's records after the checkpoint and redoes
  those iterations; a remote tracker does not send them again, since resume is exact (the redone values equal
  what it already holds; ``tests/test_training.py`` shows resume exactness), so no step is logged twice.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any

from common.files import replace_text

STATE = "trackers.json"


def namespace(kind: str, values: dict[str, Any]) -> str:
    """``train``; ``eval`` for periodic evaluations; ``eval_<label>`` for the base and final ones."""
    if kind == "eval" and values.get("label") in ("base", "final"):
        return f"eval_{values['label']}"
    return kind


def scalars(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a record (booleans and strings are not metrics)."""
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Tracker:
    """One destination of the run's numbers; the default methods do nothing."""

    def start(self, params: dict[str, Any], machine: dict[str, Any]) -> None:
        pass

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        pass

    def finish(self, table: str, lines: list[str], plot: Path, samples: list[Path]) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlTracker(Tracker):
    """``metrics.jsonl``: every record whole (RunLog reads it back for resume, selection and the plot)."""

    def __init__(self, path: Path):
        self.path = path

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values}) + "\n")


class TensorBoardTracker(Tracker):
    """``tensorboard/``: every number as ``<kind>/<key>`` on the iteration axis."""

    def __init__(self, directory: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(directory))

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"{kind}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class ConsoleTracker(Tracker):
    """The console: at the end, the paper's table before and after training and where the run's files are."""

    def finish(self, table: str, lines: list[str], plot: Path, samples: list[Path]) -> None:
        print("\n" + table, flush=True)
        print("\n" + "\n".join(lines), flush=True)


class _RemoteTracker(Tracker):
    """A tracker that keeps its run id and the last step of each namespace in ``trackers.json``."""

    key = ""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.state = self._read().get(self.key, {"steps": {}})

    def _read(self) -> dict[str, Any]:
        path = self.run_dir / STATE
        return json.loads(path.read_text()) if path.exists() else {}

    def _save(self) -> None:
        """Write this tracker's entry, keeping the others' (each tracker owns one key of the file)."""
        replace_text(self.run_dir / STATE, json.dumps({**self._read(), self.key: self.state}, indent=1))

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        space = namespace(kind, values)
        if step <= self.state["steps"].get(space, -1):
            return  # already sent before the restart: resume redoes it exactly
        self._send(space, step, scalars(values))
        self.state["steps"][space] = step
        self._save()

    def _send(self, space: str, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError


class WandbTracker(_RemoteTracker):
    """A Weights & Biases run (``run.wandb``); its files live in ``<run_dir>/wandb``."""

    key = "wandb"

    def __init__(self, run_dir: Path, settings: Any, run_name: str):
        super().__init__(run_dir)
        import wandb

        self.wandb = wandb
        if "id" not in self.state:
            self.state["id"] = secrets.token_hex(4)  # W&B run ids: lowercase letters and digits
            self._save()
        self.settings, self.name = settings, settings.name or run_name
        self.run = None

    def start(self, params: dict[str, Any], machine: dict[str, Any]) -> None:
        s = self.settings
        self.run = self.wandb.init(project=s.project, entity=s.entity, group=s.group, name=self.name, tags=list(s.tags),
                                   id=self.state["id"], resume="allow", dir=str(self.run_dir), config={**params, "machine": machine},
                                   allow_val_change=True, reinit="create_new")

    def _send(self, space: str, step: int, values: dict[str, float]) -> None:
        # W&B's step is the iteration: train and eval records of one iteration share a row, steps never go back
        self.run.log({f"{space}/{k}": v for k, v in values.items()}, step=step)

    def finish(self, table: str, lines: list[str], plot: Path, samples: list[Path]) -> None:
        import pyarrow.parquet as pq

        payload: dict[str, Any] = {"plot": self.wandb.Image(str(plot))}
        for path in samples:
            frame = pq.read_table(path).to_pandas()
            keep = [c for c in frame.columns if not c.endswith(("_ids", "_logprobs"))]  # texts and rewards, not token arrays
            payload[f"samples/{path.stem}"] = self.wandb.Table(dataframe=frame[keep].astype(str))
        self.run.log(payload, step=max(self.state["steps"].values(), default=0))  # the last row: the final evaluation's
        self.run.summary["final_table"] = table

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class MlflowTracker(_RemoteTracker):
    """An MLflow run (``run.mlflow``); by default in ``sqlite:///<run_dir>/mlflow.db``, artifacts in
    ``<run_dir>/mlflow_artifacts``."""

    key = "mlflow"

    def __init__(self, run_dir: Path, settings: Any, run_name: str):
        super().__init__(run_dir)
        from mlflow.tracking import MlflowClient

        self.uri = settings.tracking_uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=self.uri)
        if "id" not in self.state:
            experiment = self.client.get_experiment_by_name(settings.experiment)
            # with the default local store, artifacts stay in the run directory too (MLflow's default is ./mlruns)
            where = None if settings.tracking_uri else (run_dir / "mlflow_artifacts").resolve().as_uri()
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(settings.experiment, artifact_location=where)
            self.state["id"] = self.client.create_run(experiment_id, run_name=settings.run_name or run_name).info.run_id
            self._save()
        self.run_id = self.state["id"]

    def start(self, params: dict[str, Any], machine: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        self.client.update_run(self.run_id, status="RUNNING")
        if not self.state.get("params"):  # params are immutable in MLflow: log them once per run
            flat = flatten(params)
            self.client.log_batch(self.run_id, params=[Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in flat.items()])
            self.state["params"] = True
            self._save()
        self.client.log_batch(self.run_id, tags=[RunTag(f"machine.{k}", str(v)) for k, v in flatten(machine).items()])

    def _send(self, space: str, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(f"{space}/{k}", v, now, step) for k, v in values.items()])

    def finish(self, table: str, lines: list[str], plot: Path, samples: list[Path]) -> None:
        self.client.log_text(self.run_id, table, "final_table.txt")
        self.client.log_artifact(self.run_id, str(plot))
        for path in samples:
            self.client.log_artifact(self.run_id, str(path), "samples")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def build_trackers(names: list[str], run_dir: Path, run_cfg: Any) -> list[Tracker]:
    """The trackers ``run.loggers`` names, in that order (jsonl first: it is what a crash must not lose)."""
    order = sorted(names, key=lambda n: n != "jsonl")
    made: list[Tracker] = []
    for name in order:
        if name == "jsonl":
            made.append(JsonlTracker(run_dir / "metrics.jsonl"))
        elif name == "tensorboard":
            made.append(TensorBoardTracker(run_dir / "tensorboard"))
        elif name == "console":
            made.append(ConsoleTracker())
        elif name == "wandb":
            os.environ.setdefault("WANDB_SILENT", "true")
            made.append(WandbTracker(run_dir, run_cfg.wandb, run_cfg.name))
        elif name == "mlflow":
            made.append(MlflowTracker(run_dir, run_cfg.mlflow, run_cfg.name))
    return made
