"""``python -m bench [NAME ...|all] [--tiny]``: run benchmarks, print one table, write bench/results/NAME.json."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from bench.common import table, write

BENCHES = ["rewards", "generation", "learner", "iteration", "grpo_trl"]
MODEL_BENCHES = ["generation", "learner", "iteration", "grpo_trl"]  # take --model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", default=["all"], help=f"benchmarks: {', '.join(BENCHES)} or all")
    parser.add_argument("--tiny", action="store_true", help="smallest settings (smoke test)")
    parser.add_argument("--model", help="a Hugging Face model folder instead of the embedded model (every benchmark that runs a model)")
    args = parser.parse_args(argv)
    names = BENCHES if "all" in args.names else args.names
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"error: unknown benchmark(s) {unknown}; choose from {BENCHES}", file=sys.stderr)
        return 2
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    results = []
    for name in names:
        extra = {"model_name": args.model} if args.model and name in MODEL_BENCHES else {}
        result = importlib.import_module(f"bench.{name}").run(tiny=args.tiny, **extra)
        path = write(result)
        print(f"{name}: wrote {path}", flush=True)
        results.append(result)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
