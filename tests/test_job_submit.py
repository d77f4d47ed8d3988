"""The cluster path: `ray job submit` of a tiny training run (the tiny random model) against a real local head started by
this test on its own ports (never `ray stop`, which would stop every Ray on the machine). While the
job runs, the named actors are read through Ray's state API and the run's custom metrics through
the node's metrics export endpoint."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from common.network import free_port

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TINY = ["algorithm.stage1_iterations=1", "algorithm.stage2_iterations=3", "rollout.problems_per_iteration=2",
        "rollout.samples_per_problem=2", "rollout.attempt1.max_tokens=16", "rollout.attempt2.max_tokens=16",
        "rollout.cpu_kv_cache_gb=0.25", "rollout.max_model_len=512", "eval.num_problems=2", "eval.max_tokens=16",
        "task.train_size=20", "task.eval_size=4", "run.progress=false", "run.name=job"]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    where = tmp_path_factory.mktemp("head")
    temp_dir = tempfile.mkdtemp(prefix="rayhead")  # short: Ray's socket paths must stay under 107 characters
    log = (where / "ray_start.log").open("w")  # a file, not a pipe nobody drains
    # every port of its own: the session's Ray (other tests) already holds the default agent port 52365,
    # and a head whose dashboard agent cannot bind refuses every job with "No available agent"
    ports = {name: free_port() for name in ("gcs", "dashboard", "metrics", "client", "agent_http", "agent_grpc", "runtime_env")}
    # metrics exported every second (Ray's default is 10 s, and a gauge leaves the export page two intervals after
    # its actor ends): the tiny job lasts seconds, and a 10 s export could show none of its gauges before it ended
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_metrics_report_interval_ms="1000", PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={ports['gcs']}", "--num-cpus=4",
         "--include-dashboard=true", f"--dashboard-port={ports['dashboard']}", f"--metrics-export-port={ports['metrics']}",
         f"--ray-client-server-port={ports['client']}", "--dashboard-host=127.0.0.1",
         f"--dashboard-agent-listen-port={ports['agent_http']}", f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
         f"--runtime-env-agent-port={ports['runtime_env']}", f"--temp-dir={temp_dir}"],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{ports['dashboard']}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"ray start --head exited: {Path(log.name).read_text()[-2000:]}")
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        pytest.fail("the local Ray head's dashboard did not come up in 120 s")
    yield {"url": url, "env": env, "ports": ports, "logs": temp_dir}
    os.killpg(proc.pid, signal.SIGTERM)  # stops only this head: its own process group
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is still there (gcs_server may linger)
    except ProcessLookupError:
        pass
    shutil.rmtree(temp_dir, ignore_errors=True)


def _job(head, command, *args, check=True) -> str:
    """``ray job COMMAND --address URL ARGS``; returns stdout and stderr together."""
    done = subprocess.run([str(BIN / "ray"), "job", command, "--address", head["url"], *args], env=head["env"], cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=check)
    return done.stdout + done.stderr


def _agent_log(head) -> str:
    """The tail of the head's dashboard-agent log, for a failure message."""
    found = sorted(Path(head["logs"]).glob("session_*/logs/dashboard_agent*.log"))
    return f"{found[-1]}:\n{found[-1].read_text()[-2000:]}" if found else "(no dashboard agent log)"


ACTORS = {"generator-0", "learner-rank-0", "reward-0", "driver"}
# each expected metric, as a sample line of the Prometheus text format (Ray prefixes custom metrics with ray_)
METRICS = {"score_iteration": r"^(ray_)?score_iteration\{[^}]*\} [1-4](\.0)?$", "score_weight_version": r"^(ray_)?score_weight_version\{[^}]*\} \S+$",
           "score_phase_seconds": r"^(ray_)?score_phase_seconds\{[^}]*\} \S+$",
           # the overlap's gauges (rollout.off_policy_steps), set by the synchronous loop too: 0 behind, its waits
           "score_staleness": r"^(ray_)?score_staleness\{[^}]*\} 0(\.0)?$",
           "score_generator_wait_seconds": r"^(ray_)?score_generator_wait_seconds\{[^}]*\} \S+$"}


def _wait_terminal(client, job_id, deadline):
    """The job's status once it has ended (or the last one seen at the deadline)."""
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal() or time.monotonic() > deadline:
            return status
        time.sleep(3)


def test_ray_job_submit_runs_training_and_exposes_actors_and_metrics(head, tmp_path, tiny_model_path):
    out = tmp_path / "runs"
    # the tiny random model (a local Hugging Face folder, as a user's own model would be): what is tested is the
    # submission, the actors and the metrics, not what the model knows
    entry = ["python", "-m", "cluster.main", "train", "--overwrite", "--set", f"run.output_dir={out}", "--set", f"model.path={tiny_model_path}"]
    for o in TINY:
        entry += ["--set", o]
    # the head answers HTTP before its job agent is up; on a loaded machine that can take a while
    for _ in range(12):
        submitted = _job(head, "submit", "--no-wait", "--working-dir", ".", "--", *entry, check=False)
        found = re.search(r"raysubmit_\w+", submitted)
        if found:
            break
        time.sleep(5)
    assert found, f"ray job submit failed:\n{submitted[-3000:]}\n{_agent_log(head)}"
    job_id = found.group(0)

    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    client = JobSubmissionClient(head["url"])

    # Everything here fills in over time (actors start one by one, each metric appears after the
    # phase that sets it): poll, keeping what each sample shows, until all of it was seen or the
    # job ended, and only then assert.
    seen_actors: set[str] = set()
    seen_metrics: dict[str, str] = {}  # metric name -> its last sample line
    status = None
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            break
        if ACTORS <= seen_actors and set(METRICS) <= set(seen_metrics):
            break
        try:
            seen_actors |= {a.name for a in list_actors(address=head["url"], filters=[("state", "=", "ALIVE")], timeout=10) if a.name}
            body = urllib.request.urlopen(f"http://127.0.0.1:{head['ports']['metrics']}/metrics", timeout=5).read().decode()
            for name, pattern in METRICS.items():
                found_line = re.search(pattern, body, re.MULTILINE)
                if found_line:
                    seen_metrics[name] = found_line.group(0)
        except Exception:  # noqa: BLE001 - the head may be busy; poll again
            pass
        time.sleep(1)
    if not status.is_terminal():
        status = _wait_terminal(client, job_id, deadline)
    logs = _job(head, "logs", job_id, check=False)
    assert status == JobStatus.SUCCEEDED, f"job did not succeed: {status}\n{logs[-3000:]}"
    assert "eval [final]" in logs and "Accuracy@t1" in logs
    assert ACTORS <= seen_actors, seen_actors
    assert set(METRICS) <= set(seen_metrics), seen_metrics
    evals = json.loads((out / "job" / "eval.json").read_text())
    assert [e["label"] for e in evals] == ["base", "final"]
