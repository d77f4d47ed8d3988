"""Reading a run back from W&B's and MLflow's own storage, for the tracker tests.

W&B: wandb 0.31 writes an offline run as ``run-<id>.wandb``, a LevelDB-style log of the library's own
protobuf ``Record`` messages (wandb.proto.wandb_internal_pb2), and no longer ships a Python reader for it
(its reader is the Go ``wandb-core`` that ``wandb sync`` runs). :func:`wandb_history` walks the log's
blocks and parses every record with that protobuf schema. MLflow: its own ``MlflowClient``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768  # the log's block size; each record chunk has a 7-byte header (crc32, length, type)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path):
    """Every ``Record`` of one ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_runs(wandb_dir: Path) -> list[dict]:
    """Each offline run segment (one per start of the run), oldest first: its id, config keys and history rows."""
    segments = []
    for path in sorted(wandb_dir.glob("offline-run-*/run-*.wandb")):
        seg = {"id": None, "config": {}, "history": []}
        for rec in wandb_records(path):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                seg["id"] = rec.run.run_id
                seg["config"].update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
            elif kind == "config":
                seg["config"].update({u.key: json.loads(u.value_json) for u in rec.config.update})
            elif kind == "history":
                seg["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        segments.append(seg)
    return segments
