"""The second design's first, cheap step (issue #34): the base model's accuracy on each candidate training
distribution, on the validation split, at the training temperature, before any pilot run.

    .venv/bin/python scripts/calibrate_tasks.py [--temperature 0.5] [-n 200] [--only NAME ...]

Each candidate (cluster/experiment/pilots.py, ``TASKS``) is a set of ``task.*`` overrides of configs/experiment_cpu.yaml; each is evaluated with
``cluster.main eval --split val`` (one sample per problem, two attempts, the base model prompted to
self-correct), so the figures are the same kind as docs/results/temperature_calibration.json. A candidate
qualifies when its Accuracy@t1 is at least ``--floor`` (15%: groups of 4 samples still carry signal).
Results go to docs/results/pilots/candidates.json; a candidate already there is not measured again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cluster.experiment.pilots import TASKS as CANDIDATES  # noqa: E402  (name -> task overrides, new tokens per attempt)

OUT = ROOT / "docs" / "results" / "pilots" / "candidates.json"

SHARED = ["eval.attempts=2", "task.data_seed=0", "task.train_size=2000", "task.val_size=200", "task.eval_size=500", "run.dashboard=false",
          "run.progress=false"]


def measure(name: str, sets: list[str], max_tokens: int, temperature: float, n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"calibrate-{name}-") as tmp:
        args = [*SHARED, *sets, f"eval.num_problems={n}", f"eval.temperature={temperature}", f"eval.max_tokens={max_tokens}"]
        cmd = [sys.executable, "-m", "cluster.main", "eval", "--config", "configs/experiment_cpu.yaml", "--split", "val",
               "--model", "embedded", "--out", tmp, *(a for s in args for a in ("--set", s))]
        start = time.monotonic()
        subprocess.run(cmd, cwd=ROOT, check=True)
        record = json.loads((Path(tmp) / "eval.json").read_text())
    keep = ("accuracy_t1", "accuracy_t2", "delta_t1_t2", "delta_i_to_c", "delta_c_to_i", "answer_changed", "num_problems")
    return {"sets": sets, "max_tokens": max_tokens, **{k: record[k] for k in keep if k in record},
            "seconds": round(time.monotonic() - start, 1), "machine": {k: record["machine"][k] for k in ("cpu_model", "dtype")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--temperature", type=float, default=0.5, help="the training temperature (configs/experiment_cpu.yaml)")
    parser.add_argument("-n", type=int, default=200, help="validation problems per candidate")
    parser.add_argument("--floor", type=float, default=0.15, help="the least Accuracy@t1 a candidate needs")
    parser.add_argument("--only", nargs="*", choices=sorted(CANDIDATES), help="measure only these candidates")
    args = parser.parse_args()
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    data.update({"what": "the embedded base model prompted to self-correct on each candidate task's 200-problem validation split "
                         "(configs/experiment_cpu.yaml, task.data_seed=0), one sample per problem, two attempts",
                 "command": "python scripts/calibrate_tasks.py", "temperature": args.temperature, "floor_accuracy_t1": args.floor})
    results = data.setdefault("results", {})
    for name, (sets, max_tokens) in CANDIDATES.items():
        if args.only and name not in args.only or name in results:
            continue
        results[name] = measure(name, sets, max_tokens, args.temperature, args.n)
        results[name]["qualifies"] = results[name]["accuracy_t1"] >= args.floor
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(data, indent=1) + "\n")
        print(f"{name}: Accuracy@t1 {results[name]['accuracy_t1']:.3f}, @t2 {results[name]['accuracy_t2']:.3f}", flush=True)
    print(f"{'candidate':<18} {'acc@t1':>7} {'acc@t2':>7} {'Δ':>7}  qualifies (acc@t1 >= {args.floor:.0%})")
    for name, r in results.items():
        print(f"{name:<18} {r['accuracy_t1']:7.3f} {r['accuracy_t2']:7.3f} {r['delta_t1_t2']:+7.3f}  {r['qualifies']}")


if __name__ == "__main__":
    main()
