"""What every benchmark shares: the result record, machine facts, the table and the JSON file."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Measurement:
    """One figure against a baseline measured in the same run."""

    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")


@dataclass
class BenchResult:
    """A benchmark's measurements plus the settings they were taken with."""

    bench: str
    measurements: list[Measurement] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def write(result: BenchResult, out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``out_dir/<bench>.json``."""
    from common.devices import machine_record  # imports torch: only when a result is written

    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "bench": result.bench,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_record(),
        "settings": result.settings,
        "measurements": [{**asdict(m), "ratio": m.ratio} for m in result.measurements],
        "extra": result.extra,
    }
    path = out_dir / f"{result.bench}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def table(results: list[BenchResult]) -> str:
    """One plain-text table over all results."""
    rows = [("bench", "measurement", "value", "baseline", "ratio")]
    for r in results:
        for m in r.measurements:
            rows.append(
                (r.bench, m.name, f"{m.value:.4g} {m.unit}", f"{m.baseline:.4g} ({m.baseline_name})", f"{m.ratio:.3f}")
            )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
