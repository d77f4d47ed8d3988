"""Shared test fixtures: one model preparation per session (cached across sessions)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="session")
def model_path() -> str:
    """The embedded model as a Hugging Face folder, prepared once into the shared cache."""
    from cluster.model_prep import prepare_model

    return prepare_model("embedded")


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    if not (SHARED_DATA / "gsm8k_test.jsonl").is_file():
        pytest.skip(f"GSM8K files not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session, on its own ports (never `ray stop`)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_path(model_path):
    """A tiny random model of the embedded model's architecture (tests of mechanics; see tests/tiny_models.py)."""
    from tests.tiny_models import tiny_model

    return tiny_model("llama", model_path)
