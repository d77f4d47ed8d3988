"""Benchmarks are not tests; this only checks that each starts and writes valid JSON on a tiny setting.

Model: the tiny random Llama (tests/tiny_models.py) for every benchmark that runs one, through the same
``--model`` path users take for another model: what is checked is the plumbing, not a figure."""

import json

import pytest

from bench import common
from bench.__main__ import BENCHES
from rewards.sandbox import bwrap_available


@pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not usable on this host")
@pytest.mark.parametrize("name", BENCHES)
def test_bench_writes_json(name, tmp_path, ray_local, tiny_model_path):
    import importlib

    from bench.__main__ import MODEL_BENCHES

    extra = {"model_name": tiny_model_path} if name in MODEL_BENCHES else {}
    result = importlib.import_module(f"bench.{name}").run(tiny=True, **extra)
    path = common.write(result, tmp_path)
    data = json.loads(path.read_text())
    assert data["bench"] == name and data["measurements"]
    if name in MODEL_BENCHES:
        assert data["settings"]["model"] == tiny_model_path  # the smoke test ran the model it passed
    for m in data["measurements"]:
        assert m["value"] > 0 and m["baseline"] > 0 and m["ratio"] == pytest.approx(m["value"] / m["baseline"])
    assert "torch" in data["machine"]["versions"]
    assert name in common.table([result])
