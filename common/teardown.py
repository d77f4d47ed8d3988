"""Taking down what a component started on Ray: its actors (never restarted) and the placement group it owns."""

from __future__ import annotations

from typing import Any, Iterable

import ray
from ray.util.placement_group import remove_placement_group


def tear_down(actors: Iterable[Any], placement_group: Any = None) -> None:
    """Kill ``actors`` without restart (ones already gone are skipped), then remove ``placement_group`` if given."""
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
    if placement_group is not None:
        remove_placement_group(placement_group)
