"""Code grading: run a program followed by its tests in the sandbox; 1.0 only when all pass."""

from __future__ import annotations

from rewards.sandbox import SandboxLimits, SandboxResult, run_python

DEFAULT_TIMEOUT_S = 10.0


def test_program(program: str, tests: str) -> str:
    """The source that is run: the program, then the tests (plain asserts or HumanEval's check())."""
    return f"{program.rstrip()}\n\n\n{tests.rstrip()}\n"


def run_tests(
    program: str,
    tests: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_mb: int = 1024,
    limits: SandboxLimits | None = None,
    allow_weak_isolation: bool = False,
) -> SandboxResult:
    """Run ``program`` + ``tests`` in the sandbox and return the full result."""
    return run_python(
        test_program(program, tests),
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        limits=limits,
        allow_weak_isolation=allow_weak_isolation,
    )


def grade(program: str, tests: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> float:
    """1.0 when ``program`` followed by ``tests`` exits cleanly in the sandbox, else 0.0."""
    return 1.0 if run_tests(program, tests, timeout_s).status == "ok" else 0.0
