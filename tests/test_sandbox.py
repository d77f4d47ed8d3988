"""The hostile-program suite: each case is contained and the call returns within its deadline."""

import os
import socket
import subprocess
import threading
import time

import pytest

from rewards.sandbox import SandboxLimits, bwrap_available, run_python
from tests.conftest import REPO

TIMEOUT = 2.0
MARGIN = 2.0

pytestmark = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap is not usable on this host")


def _leftover_programs() -> int:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return sum("/tmp/sandbox/program.py" in line for line in out.splitlines())


def run(source, **kw):
    result = run_python(source, timeout_s=TIMEOUT, memory_mb=kw.pop("memory_mb", 256), **kw)
    assert result.duration_s < TIMEOUT + MARGIN, result
    assert _leftover_programs() == 0, "a sandboxed process outlived its call"
    return result


def test_honest_program():
    r = run("print(sum(range(10)))")
    assert (r.status, r.returncode, r.stdout) == ("ok", 0, "45\n")


def test_error_exit():
    r = run("raise SystemExit(3)")
    assert (r.status, r.returncode) == ("error", 3)


def test_infinite_loop():
    assert run("while True:\n    pass").status == "timeout"


def test_fork_bomb():
    r = run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert r.status in ("timeout", "killed")
    assert subprocess.run(["true"]).returncode == 0  # the host still forks


def test_memory_bomb():
    r = run("x = bytearray(8 * 1024 ** 3)\nprint('allocated')")
    assert r.status == "memory" and "allocated" not in r.stdout


def test_output_flood():
    r = run("while True:\n    print('x' * 10000)", limits=SandboxLimits(timeout_s=TIMEOUT, memory_mb=256, max_output_bytes=4096))
    assert r.status == "killed"
    assert len(r.stdout) < 4096 + 200 and "output truncated" in r.stdout


@pytest.mark.parametrize("folder", ["/var/tmp", "/work", str(REPO)])
def test_writing_outside_scratch(folder):
    target = os.path.join(folder, "score-sandbox-owned.txt")
    r = run(f"open({target!r}, 'w').write('x')")
    assert r.status == "error"
    if os.path.realpath(folder).startswith("/tmp/"):
        # inside the sandbox /tmp is a private tmpfs: the host's folder is not even visible
        assert "No such file or directory" in r.stderr, r.stderr
    else:
        assert "Read-only file system" in r.stderr or "Permission denied" in r.stderr, r.stderr
    assert not os.path.exists(target)


def test_modifying_the_checkout():
    readme = REPO / "README.md"
    before = readme.read_bytes()
    r = run(f"open({str(readme)!r}, 'a').write('pwned')\n")
    assert r.status == "error"
    assert readme.read_bytes() == before


def test_scratch_is_private_and_writable():
    r = run("import os\nopen('f.txt', 'w').write('ok')\nprint(open('f.txt').read(), os.getcwd())")
    assert r.status == "ok" and r.stdout.startswith("ok ")
    r2 = run("import os\nprint(os.listdir('.'))")
    assert "f.txt" not in r2.stdout  # a fresh scratch directory per run


def test_no_network_even_to_host_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted = []
    server.settimeout(TIMEOUT)

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:  # timed out: nobody connected
            pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    r = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')")
    t.join(timeout=TIMEOUT + MARGIN + 1)
    server.close()
    assert r.status == "error" and "connected" not in r.stdout
    assert not accepted


def test_child_in_new_session_does_not_outlive_the_call(tmp_path):
    source = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "print('parent exits')\n"
    )
    r = run(source)
    assert r.status == "ok" and "parent exits" in r.stdout
    time.sleep(0.5)
    assert _leftover_programs() == 0


def test_killing_its_parent():
    """The program's parent is the PID namespace's init (bwrap): SIGKILL from inside the namespace is
    ignored, so the program runs on, the sandbox survives it, and the host's processes are out of reach."""
    r = run("import os, signal\nprint(os.getpid(), os.getppid())\nos.kill(os.getppid(), signal.SIGKILL)\n"
            "os.kill(1, signal.SIGKILL)\nprint('still here')")
    assert r.status == "ok" and r.stdout == "2 1\nstill here\n", r
    assert run("print('next run works')").stdout == "next run works\n"


def test_environment_secrets_are_invisible(monkeypatch):
    monkeypatch.setenv("SCORE_TEST_SECRET", "hunter2")
    r = run("import os\nprint(sorted(os.environ))\nprint(os.environ.get('SCORE_TEST_SECRET'))")
    assert "hunter2" not in r.stdout and "SCORE_TEST_SECRET" not in r.stdout


def test_refuses_without_isolation(monkeypatch):
    import rewards.sandbox as sb

    monkeypatch.setattr(sb, "_BWRAP_OK", False)
    r = sb.run_python("print(1)", timeout_s=TIMEOUT)
    assert r.status == "sandbox_error" and "refusing" in r.stderr
    with pytest.warns(RuntimeWarning, match="WEAK ISOLATION"):
        weak = sb.run_python("print(1)", timeout_s=TIMEOUT, allow_weak_isolation=True)
    assert weak.status == "ok" and weak.stdout == "1\n"


def test_program_killing_itself_is_killed_but_an_outside_kill_is_a_sandbox_error():
    r = run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert r.status == "killed" and r.returncode == 128 + 9

    import rewards.sandbox as sb

    assert sb._classify(-9, "", isolated=True) == "sandbox_error"
    assert sb._classify(-9, "", isolated=False) == "killed"
