"""Measure the embedded model's attempt-1 accuracy on each arithmetic difficulty level.

    .venv/bin/python scripts/measure_difficulty.py --levels 1,2,3 -n 200

Used to choose the default difficulty (the arithmetic task should sit at roughly
30-60% attempt-1 accuracy). Grades by the final number, as the math grader does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", default="1,2,3,4,5")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--temperatures", default="0.0,1.0")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    from vllm import SamplingParams

    from actors.engine import make_llm
    from cluster.model_prep import prepare_model
    from rewards.extract import final_answer
    from rewards.tasks.arithmetic import ArithmeticTask

    llm = make_llm(prepare_model("embedded"), seed=0)
    print(f"{'level':>5} {'temp':>5} {'acc@t1':>7}  (n={args.n}, max_tokens={args.max_tokens})")
    for level in (int(x) for x in args.levels.split(",")):
        problems = ArithmeticTask(level, train_size=1, eval_size=args.n).problems("eval")
        for temp in (float(t) for t in args.temperatures.split(",")):
            start = time.time()
            outs = llm.chat([[{"role": "user", "content": p.question}] for p in problems],
                            SamplingParams(temperature=temp, max_tokens=args.max_tokens), use_tqdm=False)
            right = sum(final_answer(o.outputs[0].text) == p.gold for o, p in zip(outs, problems))
            print(f"{level:>5} {temp:>5.1f} {right / len(problems):>7.3f}  ({time.time() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
