"""The cache of base-model first attempts (cluster/base_attempts.py): its plan check and its guard against
sampling after the weights moved. Pure logic on hand-written tables; that a run samples, reads and trains
on them is tested end to end in test_training.py."""

from __future__ import annotations

import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.batch import ATTEMPT1_SCHEMA
from cluster.base_attempts import FILE, BaseFirstAttempts, base_share
from cluster.config import ConfigError


def _cache_rows(plan: dict[int, list[str]], k: int = 2) -> pa.Table:
    rows = [{"uid": uid, "problem_index": n, "sample_index": j, "generator": "generator-0", "a1_messages": "[]",
             "a1_prompt_ids": [1], "a1_response_ids": [it, n, j], "a1_logprobs": [0.0] * 3, "a1_finish_reason": "stop",
             "a1_length": 3, "a1_text": f"{uid}/{j}", "a1_version": 0, "iteration": it}
            for n, (it, uid) in enumerate((it, uid) for it, uids in sorted(plan.items()) for uid in uids) for j in range(k)]
    schema = ATTEMPT1_SCHEMA.append(pa.field("iteration", pa.int32()))
    return pa.Table.from_pylist(rows, schema=schema)


def test_the_cache_gives_each_iteration_its_own_problems_in_draw_order(tmp_path):
    plan = {2: ["b", "a"], 3: ["c", "d"]}
    pq.write_table(_cache_rows(plan), tmp_path / FILE)
    cache = BaseFirstAttempts(tmp_path, plan)
    assert cache.load() and cache.ready
    rows = cache.rows(3)
    assert rows.schema == ATTEMPT1_SCHEMA and rows["a1_text"].to_pylist() == ["c/0", "c/1", "d/0", "d/1"]
    assert cache.rows(2)["uid"].to_pylist() == ["b", "b", "a", "a"]


@pytest.mark.parametrize("other", [{2: ["b", "a"], 3: ["d", "c"]}, {2: ["b", "a"]}, {2: ["b", "a"], 3: ["c", "d"], 4: ["e", "f"]}])
def test_a_cache_written_for_another_plan_is_refused_in_one_line(tmp_path, other):
    pq.write_table(_cache_rows({2: ["b", "a"], 3: ["c", "d"]}), tmp_path / FILE)
    with pytest.raises(ConfigError, match="other iterations or problems than this run draws") as err:
        BaseFirstAttempts(tmp_path, other).load()
    assert "\n" not in str(err.value)


def test_no_cache_is_no_load_and_base_attempts_are_never_sampled_from_moved_weights(tmp_path):
    cache = BaseFirstAttempts(tmp_path, {1: ["a"]})
    assert not cache.load() and not cache.ready
    with pytest.raises(ConfigError, match="before the first update, but the generators hold weight version 3"):
        cache.fill(types.SimpleNamespace(version=3), None, {}, 2, {})
    assert not (tmp_path / FILE).exists()
    with pytest.raises(RuntimeError, match="neither loaded nor filled"):
        cache.rows(1)


def test_the_base_share_rounds_to_whole_problems():
    assert [base_share(p, 8) for p in (0.0, 0.1, 0.25, 0.5, 1.0)] == [0, 1, 2, 4, 8]
