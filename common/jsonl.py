"""JSON Lines files (``metrics.jsonl``, ``timings.jsonl``): one JSON object per line, blank lines ignored."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record in ``path``, in order; an empty list when the file does not exist yet."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``path`` with ``records``, one per line: written beside it and renamed over it, so a reader
    (or a crash) sees the old file or the new one, never half of one, and a hard link at ``path`` (a
    file shared with another run's folder) is replaced, never written through."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)
