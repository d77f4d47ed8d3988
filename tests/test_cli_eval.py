"""`python -m cluster.main eval` on a model folder: the paper's table, JSON, CSV and samples."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from tests.conftest import REPO


def test_eval_command_writes_the_table_and_files(model_path, tmp_path):
    out = tmp_path / "eval"
    done = subprocess.run(
        [sys.executable, "-m", "cluster.main", "eval", "--model", model_path, "--out", str(out),
         "--set", "eval.num_problems=4", "--set", "eval.max_tokens=24", "--set", "rollout.cpu_kv_cache_gb=0.25",
         "--set", "run.dashboard=false", "--set", "run.num_cpus=2", "--set", "eval.attempts=3"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Accuracy@t1" in done.stdout and "Δ_c→i" in done.stdout
    record = json.loads((out / "eval.json").read_text())
    assert record["num_problems"] == 4
    assert record["delta_t1_t2"] == record["accuracy_t2"] - record["accuracy_t1"]
    rows = list(csv.DictReader((out / "eval.csv").open()))
    assert rows[0]["num_problems"] == "4"
    import pyarrow.parquet as pq

    samples = pq.read_table(out / "samples.parquet")
    assert samples.num_rows == 4 and {"r1", "r2", "r3", "a3_text"} <= set(samples.column_names)
    assert record["accuracy_t3"] == sum(r >= 0.5 for r in samples["r3"].to_pylist()) / 4  # the instruction, repeated once more
    assert 0 <= record["answer_changed"] <= 1 and record["split"] == "eval"
    from common.devices import resolve_dtype

    # where it computed: the dtype auto chose on this machine, and the flags that chose it
    assert record["machine"]["dtype"] == resolve_dtype("auto", gpu=False) == record["machine"]["auto_dtype"]
    assert record["machine"]["cpus"] >= 1 and "torch" in record["machine"]["versions"]


def test_eval_on_the_validation_split_needs_one(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cluster.main", "eval", "--split", "val", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error:") and "task.val_size" in done.stderr


def test_eval_command_reports_a_missing_model_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cluster.main", "eval", "--model", str(tmp_path / "nope")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and "Traceback" not in done.stderr


def _first_attempts_file(model_path, path, order=(3, 2, 1, 0), wrong=(3, 2)):
    """Hand-written first attempts on the default task's first held-out problems, in the file order ``order``:
    a wrong answer for the problems in ``wrong``, the gold one for the others. The model would not write these
    itself, so an attempt 1 that was regenerated instead of kept would show."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from actors.batch import ATTEMPT1_SCHEMA
    from actors.prompts import ChatFormatter
    from cluster.config import load_config
    from rewards.tasks import build_task

    cfg = load_config()
    task = build_task(cfg.task, seed=cfg.run.seed)
    problems = task.problems("eval")
    tok = AutoTokenizer.from_pretrained(model_path)
    fmt, eot = ChatFormatter(tok), tok.convert_tokens_to_ids("<|im_end|>")
    rows = []
    for j, i in enumerate(order):
        p, messages = problems[i], task.first_turn(problems[i])
        text = f"The answer is {int(p.gold) + 7 if i in wrong else p.gold}."
        y1 = fmt.encode(text) + [eot]
        rows.append({"uid": p.uid, "problem_index": 10 + j, "sample_index": 0, "generator": "hand", "a1_messages": json.dumps(messages),
                     "a1_prompt_ids": fmt.first_prompt_ids(messages), "a1_response_ids": y1, "a1_logprobs": [0.0] * len(y1),
                     "a1_finish_reason": "stop", "a1_length": len(y1), "a1_text": text, "a1_version": 3})
    pq.write_table(pa.Table.from_pylist(rows, schema=ATTEMPT1_SCHEMA), path)
    return rows


def test_eval_on_fixed_first_attempts_writes_only_the_later_ones_and_reports_fix_and_break_rates(model_path, tmp_path):
    """`eval --first-attempts FILE` (the paper's Figure 5 diagnostic): the model under test continues the file's first
    attempts token for token, graded against each problem's own answer, and the report's fix and break rates are
    the shares of the wrong and the right first attempts that attempt 2 turned around."""
    import pyarrow.parquet as pq

    given = _first_attempts_file(model_path, tmp_path / "first.parquet")
    out = tmp_path / "fixed"
    done = subprocess.run(
        [sys.executable, "-m", "cluster.main", "eval", "--model", model_path, "--out", str(out), "--first-attempts", str(tmp_path / "first.parquet"),
         "--set", "eval.num_problems=4", "--set", "eval.max_tokens=24", "--set", "rollout.cpu_kv_cache_gb=0.25",
         "--set", "run.dashboard=false", "--set", "run.num_cpus=2"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    samples = pq.read_table(out / "samples.parquet")
    assert samples["a1_text"].to_pylist() == [g["a1_text"] for g in given]  # the file's order, attempt 1 untouched
    assert samples["r1"].to_pylist() == [0.0, 0.0, 1.0, 1.0]  # problems 3 and 2 (first in the file) were given wrong answers
    assert samples["a1_version"].to_pylist() == [3] * 4 and samples["a2_version"].to_pylist() == [0] * 4
    for row, g in zip(samples.to_pylist(), given):  # attempt 2 is conditioned on exactly the given tokens
        assert row["a2_prompt_ids"][: len(g["a1_prompt_ids"]) + len(g["a1_response_ids"]) - 1] == g["a1_prompt_ids"] + g["a1_response_ids"][:-1]
    r2 = samples["r2"].to_pylist()
    record = json.loads((out / "eval.json").read_text())
    assert record["first_attempts"] == str((tmp_path / "first.parquet").resolve()) and record["split"] is None
    assert (record["wrong_first_attempts"], record["right_first_attempts"]) == (2, 2)
    assert record["fix_rate"] == (r2[0] + r2[1]) / 2 and record["break_rate"] == (2 - r2[2] - r2[3]) / 2
    for name in ("fix_rate", "break_rate"):
        low, high = record[f"{name}_ci"]
        assert 0 <= low <= record[name] <= high <= 1 and high - low > 0.3  # two problems each: a wide interval
    assert record["delta_i_to_c"] == record["fix_rate"] / 2  # half the problems had a wrong first attempt
    assert "fix rate:" in done.stdout and "break rate:" in done.stdout


def test_a_first_attempts_file_that_cannot_be_continued_is_one_line(model_path, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _first_attempts_file(model_path, tmp_path / "ok.parquet")
    pq.write_table(pa.Table.from_pylist([{"uid": r["uid"]} for r in rows]), tmp_path / "keys.parquet")
    retokenized = [{**r, "a1_prompt_ids": r["a1_prompt_ids"][1:]} for r in rows]
    pq.write_table(pa.Table.from_pylist(retokenized, schema=pq.read_schema(tmp_path / "ok.parquet")), tmp_path / "other.parquet")
    (tmp_path / "text.parquet").write_text("not parquet")
    for name, expected in (("keys", "has no column problem_index"), ("other", "tokenized differently"), ("text", "not a readable parquet"),
                           ("missing", "not a readable parquet")):
        done = subprocess.run([sys.executable, "-m", "cluster.main", "eval", "--model", model_path, "--first-attempts", str(tmp_path / f"{name}.parquet")],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.startswith("error:") and expected in done.stderr, (name, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
