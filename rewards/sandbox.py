"""Running untrusted Python (policy-written code) with hard limits.

Each run gets, through bubblewrap (``bwrap``) and rlimits:

- a file system that is denied by default: read-only, only the interpreter's prefix (for the
  Debian interpreter, ``/usr``), the directories of the shared libraries it loads, the loader's
  ``/etc/ld.so.*`` files and ``/etc/localtime``, plus private ``/dev`` and ``/proc``. Nothing else
  of the host exists inside: not the checkout, the task data, checkpoints, ``/home``, ``/root``,
  ``/mnt``, ``/opt``, ``/srv`` or ``/var`` (see :func:`visible_paths`);
- one writable place, a private tmpfs on ``/tmp`` of ``tmpfs_mb`` (default 64 MiB) whose
  ``/tmp/sandbox`` is the working directory and holds the program (copied in from a memfd: the
  host disk is never written). Its pages are memory, so they are counted in the run's budget: the
  address-space limit is ``memory_mb - tmpfs_mb``. Filling it ends the run as ``disk_full``;
- no network at all: its own network namespace, so not even the host's loopback;
- its own PID namespace and process session: when the call ends, bwrap (PID 1 inside) dies and
  the kernel kills everything the program started, daemons and new sessions included;
- limits on CPU time, address space, processes, file size and open files; when the host runs as
  root, the program runs under a throw-away unprivileged uid so that the process limit applies.
  A non-root host gets the same file system, tmpfs and namespaces (bwrap creates a user
  namespace), without the uid switch;
- a scrubbed environment (the host's secrets are invisible) and capped output.

Where bubblewrap is unavailable, :func:`run_python` refuses with ``sandbox_error`` unless weak
isolation (rlimits and a process group only) is explicitly allowed, and then warns loudly.
"""

from __future__ import annotations

import functools
import os
import random
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config's types only: this file also runs alone, as the sandbox's driver script
    from cluster.config import SandboxConfig
from typing import Literal

Status = Literal["ok", "error", "timeout", "memory", "disk_full", "killed", "sandbox_error"]
STATUSES: tuple[Status, ...] = ("ok", "error", "timeout", "memory", "disk_full", "killed", "sandbox_error")

#: Interpreter inside the sandbox: must be readable by an unprivileged uid (a venv under /root is not).
SANDBOX_PYTHON = os.environ.get("SCORE_SANDBOX_PYTHON", "/usr/bin/python3")
_UID_RANGE = (200_000, 260_000)  # throw-away uids, one per run, when the host is root
PROGRAM = "program.py"


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one sandboxed run."""

    status: Status
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one run."""

    timeout_s: float = 10.0
    memory_mb: int = 1024
    max_processes: int = 64
    max_output_bytes: int = 64 * 1024
    max_file_bytes: int = 16 * 1024 * 1024
    max_open_files: int = 64
    tmpfs_mb: int = 64  # the writable /tmp (and working directory), counted in memory_mb

    @classmethod
    def from_config(cls, sb: SandboxConfig) -> SandboxLimits:
        """The limits of ``rewards.sandbox`` (the config's keys are a subset of these fields)."""
        return cls(**{f: getattr(sb, f) for f in ("timeout_s", "memory_mb", "max_processes", "max_output_bytes", "tmpfs_mb")})

    def __post_init__(self):
        if not 0 < self.tmpfs_mb < self.memory_mb:
            raise ValueError(f"sandbox tmpfs_mb ({self.tmpfs_mb}) must be positive and below memory_mb ({self.memory_mb}): it is part of that budget")

    @property
    def address_space_bytes(self) -> int:
        return (self.memory_mb - self.tmpfs_mb) * 1024 * 1024


_BWRAP_OK: bool | None = None  # probed once per process


def bwrap_available() -> bool:
    """True when bubblewrap exists and can create its namespaces on this host."""
    global _BWRAP_OK
    if _BWRAP_OK is None:
        exe = shutil.which("bwrap")
        if exe is None:
            _BWRAP_OK = False
        else:
            probe = subprocess.run(
                [exe, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"],
                capture_output=True,
                timeout=30,
            )
            _BWRAP_OK = probe.returncode == 0
    return _BWRAP_OK


def _interpreter() -> str:
    return SANDBOX_PYTHON if os.path.exists(SANDBOX_PYTHON) else shutil.which("python3") or "python3"


@functools.lru_cache(maxsize=4)
def visible_paths(interpreter: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """What the sandbox shows read-only for ``interpreter``: directories to bind at the same path, and
    ``(target, link)`` symlinks to recreate (merged-/usr hosts: ``/lib -> usr/lib``).

    The interpreter's prefixes (asked of it, with ``-I -S``), the directories of the libraries
    ``ldd`` says it loads, and the loader's configuration under /etc.
    """
    out = subprocess.run([interpreter, "-I", "-S", "-c", "import sys; print(sys.base_prefix); print(sys.base_exec_prefix)"],
                         capture_output=True, text=True, timeout=30, check=True).stdout.split()
    dirs: set[str] = {os.path.realpath(p) for p in out}
    links: dict[str, str] = {}
    ldd = subprocess.run(["ldd", os.path.realpath(interpreter)], capture_output=True, text=True, timeout=30).stdout
    for line in ldd.splitlines():
        path = next((w for w in line.split() if w.startswith("/")), None)
        if path is None:
            continue
        for top in ("/lib", "/lib64"):  # the loader is named by its /lib64 path: keep the link
            if path.startswith(top + "/") and os.path.islink(top):
                links[top] = os.readlink(top)
        dirs.add(os.path.dirname(os.path.realpath(path)))
    for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime"):
        if os.path.exists(etc):
            dirs.add(etc)
    # a directory inside another one that is already bound adds nothing
    kept = sorted(d for d in dirs if not any(d != o and d.startswith(o.rstrip("/") + "/") for o in dirs))
    return tuple(kept), tuple(sorted((target, link) for link, target in links.items()))


def _bwrap_command(program_fd: int, limits: SandboxLimits) -> list[str]:
    binds, links = visible_paths(_interpreter())
    cmd = [
        shutil.which("bwrap") or "bwrap",
        "--unshare-all",  # user, ipc, pid, net, uts, cgroup namespaces: no network, own PIDs
        "--die-with-parent",
        "--new-session",
    ]
    for path in binds:
        cmd += ["--ro-bind", path, path]
    for target, link in links:
        cmd += ["--symlink", target, link]
    cmd += [
        "--dev", "/dev",
        "--proc", "/proc",
        "--size", str(limits.tmpfs_mb * 1024 * 1024), "--tmpfs", "/tmp",
        "--dir", "/tmp/sandbox",
        "--file", str(program_fd), f"/tmp/sandbox/{PROGRAM}",
        "--chdir", "/tmp/sandbox",
        "--clearenv",
        "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
        "--setenv", "HOME", "/tmp/sandbox",
        "--setenv", "LANG", "C.UTF-8",
        "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
        "--setenv", "PYTHONHASHSEED", "0",
        _interpreter(), "-I", "-S", f"/tmp/sandbox/{PROGRAM}",
    ]
    return cmd


def _weak_command(scratch: str) -> list[str]:
    return [_interpreter(), "-I", "-S", os.path.join(scratch, PROGRAM)]


def _limit_child(limits: SandboxLimits, uid: int | None):
    """Runs in the child between fork and exec: new session, rlimits, then drop to ``uid``."""

    cpu = int(limits.timeout_s) + 1
    memory = limits.address_space_bytes

    def apply() -> None:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if uid is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return apply


class _CappedReader(threading.Thread):
    """Drains a pipe, keeping at most ``cap`` bytes; sets ``overflow`` when more arrived."""

    def __init__(self, stream, cap: int):
        super().__init__(daemon=True)
        self.stream, self.cap = stream, cap
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = threading.Event()

    def run(self) -> None:
        try:
            while chunk := self.stream.read1(65536):
                if self.size < self.cap:
                    self.chunks.append(chunk[: self.cap - self.size])
                self.size += len(chunk)
                if self.size > self.cap:
                    self.overflow.set()
        except (OSError, ValueError):
            pass

    def text(self) -> str:
        data = b"".join(self.chunks).decode("utf-8", errors="replace")
        if self.size > self.cap:
            data += f"\n[output truncated: {self.size} bytes or more, cap {self.cap}]"
        return data


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


def run_python(
    source: str,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    *,
    limits: SandboxLimits | None = None,
    allow_weak_isolation: bool = False,
) -> SandboxResult:
    """Run ``source`` as a Python program in the sandbox and report what happened.

    Never raises for anything the program does; problems of the sandbox itself come back as
    ``sandbox_error``.
    """
    limits = limits or SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb)
    start = time.monotonic()
    isolated = bwrap_available()
    if not isolated and not allow_weak_isolation:
        return SandboxResult(
            "sandbox_error", None, "",
            "bubblewrap (bwrap) is unavailable: refusing to run untrusted code "
            "(install the Debian package 'bubblewrap', or set rewards.sandbox.allow_weak_isolation=true)",
            0.0,
        )
    if not isolated:
        warnings.warn(
            "SANDBOX RUNNING WITH WEAK ISOLATION: no namespaces, the program can reach the network "
            "and the file system; only rlimits and a process group contain it",
            RuntimeWarning,
            stacklevel=2,
        )
    uid = random.randint(*_UID_RANGE) if os.geteuid() == 0 else None
    scratch = None if isolated else tempfile.mkdtemp(prefix="score-sandbox-")
    program_fd = -1
    try:
        if isolated:  # the program reaches the sandbox's tmpfs through a memfd: nothing on the host disk
            program_fd = os.memfd_create("score-program", 0)
            os.write(program_fd, source.encode())
            os.lseek(program_fd, 0, os.SEEK_SET)
            cmd, cwd, fds = _bwrap_command(program_fd, limits), "/", (program_fd,)
        else:
            with open(os.path.join(scratch, PROGRAM), "w") as fh:
                fh.write(source)
            if uid is not None:
                os.chown(scratch, uid, uid)
                os.chmod(scratch, 0o700)
                os.chown(os.path.join(scratch, PROGRAM), uid, uid)
            cmd, cwd, fds = _weak_command(scratch), scratch, ()
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                preexec_fn=_limit_child(limits, uid),
                close_fds=True,
                pass_fds=fds,
            )
        except (OSError, subprocess.SubprocessError) as err:
            return SandboxResult("sandbox_error", None, "", f"cannot start the sandbox: {err}", time.monotonic() - start)
        out = _CappedReader(proc.stdout, limits.max_output_bytes)
        err = _CappedReader(proc.stderr, limits.max_output_bytes)
        out.start()
        err.start()
        deadline = start + limits.timeout_s
        status: Status | None = None
        while True:
            try:
                proc.wait(timeout=0.02)
                break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                status = "timeout"
            elif out.overflow.is_set() or err.overflow.is_set():
                status = "killed"  # output flood: stop it rather than drain it until the deadline
            if status:
                _kill_group(proc)
                proc.wait()
                break
        out.join(timeout=2)
        err.join(timeout=2)
        stdout, stderr = out.text(), err.text()
        returncode = proc.returncode
        if status is None:
            status = _classify(returncode, stderr, isolated)
            if status == "sandbox_error" and returncode < 0:
                stderr += f"\n[the sandbox itself was killed from outside by signal {-returncode}; not the program's fault]"
        return SandboxResult(status, returncode, stdout, stderr, time.monotonic() - start)
    finally:
        if program_fd >= 0:
            os.close(program_fd)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _classify(returncode: int, stderr: str, isolated: bool) -> Status:
    if returncode == 0:
        return "ok"
    if isolated and stderr.startswith("bwrap:"):
        return "sandbox_error"
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return "memory"
    if "No space left on device" in stderr or returncode in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ):
        return "disk_full"  # the tmpfs is full, or a file hit max_file_bytes
    if returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return "timeout"
    if returncode < 0 and isolated:
        # bwrap reports a program killed by signal N as exit code 128 + N. A negative code means
        # bwrap itself died of a signal we did not send (e.g. the grading actor is going away).
        return "sandbox_error"
    if returncode < 0 or returncode >= 128:
        return "killed"
    return "error"
