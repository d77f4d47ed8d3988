import os
import subprocess
from pathlib import Path
import sys

import pytest

from cluster.config import ConfigError, dump_config, load_config
from tests.conftest import REPO


def test_default_config_is_the_embedded_local_cpu_one():
    cfg = load_config()
    assert cfg.model.path == "embedded"
    assert cfg.task.name == "arithmetic"
    # the paper's MATH settings are the defaults of the objective
    assert (cfg.algorithm.alpha, cfg.algorithm.beta1, cfg.algorithm.beta2) == (10.0, 0.01, 0.1)


def test_dotted_overrides_are_typed():
    cfg = load_config(overrides=["learner.lr=3e-6", "rollout.attempt2.stop=[x, y]", "run.name=abc"])
    assert cfg.learner.lr == pytest.approx(3e-6)
    assert cfg.rollout.attempt2.stop == ["x", "y"]
    assert cfg.run.name == "abc"
    # the resolved config round-trips through YAML
    tmp = REPO / ".pytest_cache" / "resolved.yaml"
    tmp.parent.mkdir(exist_ok=True)
    tmp.write_text(dump_config(cfg))
    assert load_config(tmp) == cfg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("learner.lrr=1", "unknown key 'learner.lrr' (from --set) (did you mean 'learner.lr'?)"),
        ("rollout.attempt1.temprature=1", "(did you mean 'rollout.attempt1.temperature'?)"),
        ("rollout.temperature=1", "(did you mean 'rollout.attempt1.temperature' or 'rollout.attempt2.temperature'?)"),
        ("algorithm.alpah=3", "unknown key 'algorithm.alpah' (from --set) (did you mean 'algorithm.alpha'?)"),
        ("bogus.x=1", "unknown key 'bogus'"),
        ("learner.lr=abc", "learner.lr: Input should be a valid number"),
        ("learner.zero_stage=1", "learner.zero_stage"),
        ("rollout.attempt1.top_p=2", "rollout.attempt1.top_p"),
        ("learner.updates_per_batch=4", "set algorithm.clip_ratio"),
        ("task.name=gsm8k", "needs task.train_path"),
        ("rollout.attempt2.top_p=0.9", "rollout.attempt2.top_p=0.9: the learner scores the full softmax"),
        ("algorithm.kl_estimator=k4", "algorithm.kl_estimator"),
        ("algorithm.loss_agg=mean", "algorithm.loss_agg"),
        ("algorithm.gamma=1.5", "algorithm.gamma"),
        ("algorithm.vllm_is=maybe", "algorithm.vllm_is"),
        ("rewards.sandbox.tmpfs_mb=2048", "rewards.sandbox.tmpfs_mb (2048) must be below rewards.sandbox.memory_mb"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_vllm_is_takes_on_and_off_as_written(tmp_path):
    # YAML 1.1 reads a bare on / off as a boolean; the option still means what was written
    assert load_config(overrides=["algorithm.vllm_is=on"]).algorithm.vllm_is == "on"
    assert load_config(overrides=["algorithm.vllm_is=off"]).algorithm.vllm_is == "off"
    f = tmp_path / "is.yaml"
    f.write_text("algorithm:\n  vllm_is: off\n")
    assert load_config(f).algorithm.vllm_is == "off"


def test_an_unknown_key_says_whether_it_came_from_the_file_or_from_set(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner:\n  lrr: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, overrides=["algorithm.alpah=3"])
    assert "unknown key 'learner.lrr' (did you mean" in str(err.value)
    assert "unknown key 'algorithm.alpah' (from --set) (did you mean 'algorithm.alpha'?)" in str(err.value)


def test_a_key_close_to_none_gets_no_suggestion():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["bogus.x=1", "learner.zzz=1", "learner.lr.deeper=1"])
    assert "did you mean" not in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  name: [oops\nlearner: {}\n")
    with pytest.raises(ConfigError, match=r"invalid YAML in .*bad.yaml:\d+:\d+"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(scalar)


def test_malformed_override():
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(overrides=["learner.lr"])
    with pytest.raises(ConfigError, match="'run' is not a section"):
        load_config(overrides=["run=3", "run.name=x"])


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--set", "learner.lrr=1"], "unknown key 'learner.lrr'"),
        (["train", "--config", "missing.yaml"], "config file not found: missing.yaml"),
        (["eval", "--set", "task.name=gsm8k", "--set", "task.eval_path=/no/such.jsonl"], "data file not found"),
    ],
)
def test_cli_user_errors_are_one_line_without_traceback(args, expected):
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.main", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_info_messages_reach_stdout_when_run_as_a_module():
    """Run with ``-m``, a module's ``__name__`` is ``"__main__"``: its logger must still be under the one level switch."""
    proc = subprocess.run([sys.executable, "-m", "cluster.main", "train", "--set", "model.path=/no/such/model", "--set", "task.train_size=50",
                           "--set", "task.eval_size=10"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "model folder not found" in proc.stderr
    assert "arithmetic(difficulty=2, train): 50 problems" in proc.stdout  # the data report, logged at INFO
    quiet = subprocess.run(proc.args, cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "SCORE_LOG_LEVEL": "WARNING"})
    assert quiet.returncode == 2 and "problems" not in quiet.stdout


def test_cli_help_lists_the_commands():
    proc = subprocess.run([sys.executable, "-m", "cluster.main", "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("train", "eval", "prepare-model", "sample"):
        assert command in proc.stdout


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path):
    cfg = load_config(path)
    assert cfg.rollout.problems_per_iteration % cfg.learner.num_ranks == 0
    assert cfg.algorithm.stage1_iterations + cfg.algorithm.stage2_iterations > 0


def test_cross_field_errors_are_one_line():
    with pytest.raises(ConfigError, match="multiple of learner.num_ranks"):
        load_config(None, ["rollout.problems_per_iteration=3", "learner.num_ranks=2"])
    with pytest.raises(ConfigError, match="at least 2"):
        load_config(None, ["rollout.samples_per_problem=1"])
    with pytest.raises(ConfigError, match="must equal learner.num_ranks"):
        load_config(None, ["rollout.colocate_with_learner=true", "rollout.num_generators=2"])
    with pytest.raises(ConfigError, match="tensor_parallel_size must be 1"):
        load_config(None, ["rollout.colocate_with_learner=true", "rollout.tensor_parallel_size=2"])
