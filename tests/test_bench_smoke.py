"""Benchmarks are not tests; this only checks that each starts and writes valid JSON on a tiny setting."""

import json

import pytest

from bench import common
from bench.__main__ import BENCHES
from rewards.sandbox import bwrap_available


@pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not usable on this host")
@pytest.mark.parametrize("name", BENCHES)
def test_bench_writes_json(name, tmp_path, ray_local):
    import importlib

    result = importlib.import_module(f"bench.{name}").run(tiny=True)
    path = common.write(result, tmp_path)
    data = json.loads(path.read_text())
    assert data["bench"] == name and data["measurements"]
    for m in data["measurements"]:
        assert m["value"] > 0 and m["baseline"] > 0 and m["ratio"] == pytest.approx(m["value"] / m["baseline"])
    assert "torch" in data["machine"]["versions"]
    assert name in common.table([result])
