import re
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
        ("algorithm.beta2_target_kl=0", "algorithm.beta2_target_kl"),
        ("algorithm.beta2_kl_gain=5", "algorithm.beta2_kl_gain"),
        ("algorithm.stage2_base_first_attempts=1.5", "algorithm.stage2_base_first_attempts"),
        ("algorithm.attempts=1", "algorithm.attempts: Input should be greater than or equal to 2"),
        ("rewards.sandbox.tmpfs_mb=2048", "rewards.sandbox.tmpfs_mb (2048) must be below rewards.sandbox.memory_mb"),
        ("rollout.off_policy_steps=2", "rollout.off_policy_steps: Input should be 0 or 1"),
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
    with pytest.raises(ConfigError, match="colocated generators and learner ranks share a device and take turns"):
        load_config(None, ["rollout.colocate_with_learner=true", "rollout.off_policy_steps=1"])
    with pytest.raises(ConfigError, match="algorithm.vllm_is cannot be off"):
        load_config(None, ["rollout.off_policy_steps=1", "algorithm.vllm_is=off"])
    assert load_config(None, ["rollout.off_policy_steps=1", "algorithm.vllm_is=on"]).rollout.off_policy_steps == 1
    with pytest.raises(ConfigError, match="adapts Stage I's beta2, but algorithm.stage1_iterations is 0"):
        load_config(None, ["algorithm.beta2_target_kl=0.01", "algorithm.stage1_iterations=0"])
    with pytest.raises(ConfigError, match="algorithm.beta2 must be above 0"):
        load_config(None, ["algorithm.beta2_target_kl=0.01", "algorithm.beta2=0"])
    assert load_config(None, ["algorithm.beta2_target_kl=0.01"]).algorithm.beta2_target_kl == 0.01
    with pytest.raises(ConfigError, match="applies to Stage II, but algorithm.stage2_iterations is 0"):
        load_config(None, ["algorithm.stage2_base_first_attempts=0.5", "algorithm.stage2_iterations=0"])
    with pytest.raises(ConfigError, match=r"stage2_base_first_attempts=0.05 of rollout.problems_per_iteration=8 rounds to no problem"):
        load_config(None, ["algorithm.stage2_base_first_attempts=0.05", "rollout.problems_per_iteration=8"])
    with pytest.raises(ConfigError, match="eval.split=val evaluates on the validation split, but task.val_size is 0"):
        load_config(None, ["eval.split=val"])
    assert load_config(None, ["eval.split=val", "task.val_size=20"]).eval.split == "val"


def test_a_greedy_training_temperature_is_refused():
    with pytest.raises(ConfigError, match=r"rollout.attempt2.temperature=0 is greedy decoding.*train with a temperature > 0"):
        load_config(None, ["rollout.attempt2.temperature=0"])
    assert load_config(None, ["eval.temperature=0"]).eval.temperature == 0  # greedy evaluation stays the default


# --------------------------------------------------------------------------- resume keeps the run's config


def _saved_run(tmp_path, *overrides):
    from cluster.config import dump_config

    cfg = load_config(None, ["rollout.problems_per_iteration=2", "algorithm.alpha=3", "learner.lr=2e-6", f"run.output_dir={tmp_path}",
                             "run.name=r", *overrides])
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text(dump_config(cfg))
    return cfg


def _train_config(*argv):
    from cluster.main import build_parser, train_config

    return train_config(build_parser().parse_args(["train", *argv]))


def test_resume_continues_the_runs_own_config_with_new_settings_on_top(tmp_path):
    saved = _saved_run(tmp_path)
    where = ["--set", f"run.output_dir={tmp_path}", "--set", "run.name=r"]
    assert _train_config("--resume", *where) == saved  # no --config: not the defaults, the run's own
    longer = _train_config("--resume", *where, "--set", "learner.lr=1e-6", "--set", "algorithm.stage2_iterations=9", "--set", "eval.every_iterations=1")
    assert (longer.learner.lr, longer.algorithm.stage2_iterations, longer.eval.every_iterations) == (1e-6, 9, 1)
    assert longer.algorithm.alpha == 3 and longer.rollout.problems_per_iteration == 2
    for change, shown in (("algorithm.alpha=10", "algorithm.alpha 3.0 -> 10.0"), ("rollout.samples_per_problem=8", "rollout.samples_per_problem 4 -> 8"),
                          ("learner.num_ranks=2", "learner.num_ranks 1 -> 2"), ("algorithm.stage2_iterations=1", "algorithm.stage2_iterations")):
        with pytest.raises(ConfigError, match=f"--resume would change what the checkpoint was trained with: {shown}"):
            _train_config("--resume", *where, "--set", change)
    forced = _train_config("--resume", *where, "--set", "algorithm.alpha=10", "--force-config-change")
    assert forced.algorithm.alpha == 10
    with pytest.raises(ConfigError, match="not found"):
        _train_config("--resume", "--set", f"run.output_dir={tmp_path}", "--set", "run.name=other")
    with pytest.raises(ConfigError, match="goes with --resume"):
        _train_config("--force-config-change")


def test_a_refused_resume_change_is_one_line_and_exit_2(tmp_path):
    _saved_run(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "cluster.main", "train", "--resume", "--set", f"run.output_dir={tmp_path}", "--set", "run.name=r",
                           "--set", "algorithm.beta1=0.5"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "algorithm.beta1 0.01 -> 0.5" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- the model and the lengths (cluster.preflight)


def _tiny_copy(model_path, tmp_path, edit):
    import json
    import shutil

    from tests.tiny_models import tiny_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_model("llama", model_path), folder)
    edit(folder, json)
    return str(folder)


def test_preflight_accepts_the_default_run_and_reports_its_lengths(model_path):
    from cluster.preflight import check_run
    from rewards.tasks import build_task

    cfg = load_config()
    lengths = check_run(cfg, model_path, build_task(cfg.task, seed=0))
    assert 0 < lengths["prompt"] and 0 < lengths["correction_turn"]
    assert lengths["train"] == lengths["prompt"] + cfg.rollout.attempt1.max_tokens + lengths["correction_turn"] + cfg.rollout.attempt2.max_tokens
    assert lengths["train"] <= cfg.rollout.max_model_len


def test_preflight_refuses_what_would_fail_mid_run(model_path, tmp_path):
    from cluster.preflight import check_run
    from rewards.tasks import build_task

    cfg = load_config()
    task = build_task(cfg.task, seed=0)
    long = load_config(None, ["rollout.max_model_len=256", "rollout.attempt1.max_tokens=100", "rollout.attempt2.max_tokens=100"])
    with pytest.raises(ConfigError, match=r"training needs sequences of up to \d+ tokens .* more than rollout.max_model_len=256"):
        check_run(long, model_path, task)
    evals = load_config(None, ["rollout.max_model_len=512", "eval.attempts=5", "eval.max_tokens=100"])
    with pytest.raises(ConfigError, match=r"the 5-attempt evaluation needs sequences of up to"):
        check_run(evals, model_path, task)

    def drop_template(folder, json):
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))

    with pytest.raises(ConfigError, match="has no chat template"):
        check_run(cfg, _tiny_copy(model_path, tmp_path / "a", drop_template), task)

    def other_eos(folder, json):  # the model stops at <|endoftext|> (id 0), the template closes turns with <|im_end|>
        for name, key in (("generation_config.json", "eos_token_id"), ("config.json", "eos_token_id")):
            data = json.loads((folder / name).read_text())
            data[key] = 0
            (folder / name).write_text(json.dumps(data))
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["eos_token"] = "<|endoftext|>"
        (folder / "tokenizer_config.json").write_text(json.dumps(config))

    with pytest.raises(ConfigError, match=r"ends a turn with '<\|im_end\|>' \(id 2\), which vLLM does not stop at \(stop ids \[0\]\)"):
        check_run(cfg, _tiny_copy(model_path, tmp_path / "b", other_eos), task)


def test_offloading_optimizer_states_needs_zero_2():
    assert load_config(None, ["learner.offload_states_during_generation=true"]).learner.offload_states_during_generation
    with pytest.raises(ConfigError, match="offload_states_during_generation works with learner.zero_stage 2"):
        load_config(None, ["learner.offload_states_during_generation=true", "learner.zero_stage=3"])


def test_float32_overrides_apply_only_in_float32_and_yield_to_set(tmp_path):
    """run.float32_overrides (the demo's smaller batch where the CPU has no bf16): applied once the dtype is
    float32, never in bf16; a key the user --set keeps the user's value; the applied config lists none."""
    from cluster.config import for_dtype

    cfg = load_config(overrides=["run.float32_overrides=[rollout.problems_per_iteration=2, eval.num_problems=7]"])
    assert for_dtype(cfg, "bfloat16") == cfg
    f32 = for_dtype(cfg, "float32")
    assert (f32.rollout.problems_per_iteration, f32.eval.num_problems, f32.run.float32_overrides) == (2, 7, [])
    assert for_dtype(f32, "float32") == f32  # applying twice (build after run) changes nothing more
    mine = load_config(overrides=["run.float32_overrides=[rollout.problems_per_iteration=2, eval.num_problems=7]", "eval.num_problems=50"])
    assert for_dtype(mine, "float32").eval.num_problems == 50 and for_dtype(mine, "float32").rollout.problems_per_iteration == 2


@pytest.mark.parametrize("entries, expected", [
    ("[rollout.problems_per_iteraton=2]", "unknown key 'rollout.problems_per_iteraton'"),
    ("[rollout.problems_per_iteration=-1]", "rollout.problems_per_iteration"),
    ("[rollout.problems_per_iteration]", "must look like section.key=value"),
])
def test_a_bad_float32_override_is_one_line_at_load(entries, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)) as err:
        load_config(overrides=[f"run.float32_overrides={entries}"])
    assert "\n" not in str(err.value)


def test_the_demo_in_float32_keeps_both_stages_and_the_evaluations():
    """What the demo shrinks on a CPU without bf16 (README, "Two commands"): never a stage or an evaluation."""
    from cluster.config import for_dtype

    cfg, f32 = load_config(), for_dtype(load_config(), "float32")
    assert f32.algorithm.stage1_iterations >= 1 and f32.algorithm.stage2_iterations >= 1
    assert f32.eval.before and f32.eval.num_problems == cfg.eval.num_problems
    assert f32.rollout.problems_per_iteration * f32.rollout.samples_per_problem < cfg.rollout.problems_per_iteration * cfg.rollout.samples_per_problem
