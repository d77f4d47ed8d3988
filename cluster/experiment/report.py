"""The report, rebuilt from the result files alone: intervals, paired differences, the goal check, tables, figures.

Invariants: every number comes from the result files of one design (``docs/results/runs/*.json`` and ``transfer/``;
the first design's under ``docs/results/design1/``); the bootstrap resamples
seeds, then problems, jointly for every arm, so differences between arms are paired.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cluster.evaluate import LABELS, METRICS, metric_array
from cluster.evaluate import correction_rates as rates_with_intervals
from cluster.evaluate import wilson_interval
from cluster.experiment.arms import ARM_TITLES, ARMS, DESIGN_ARMS, TRAINED
from cluster.experiment.record import dtypes_of, load_results, outcomes


def bootstrap(results: dict[str, list[tuple[np.ndarray, np.ndarray]]], draws: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Means over seeds and 95% intervals from a two-level bootstrap (seeds, then problems).

    Problems are resampled jointly for every arm, so differences between arms are paired.
    ``results[arm]`` is a list over seeds of (r1, r2) boolean arrays over the same problems.
    """
    rng = np.random.default_rng(seed)
    n = len(next(iter(results.values()))[0][0])
    stats: dict[str, np.ndarray] = {}
    for arm, runs in results.items():
        if any(len(r1) != n for r1, _ in runs):
            raise ValueError(f"{arm}: every run must be evaluated on the same {n} problems")
    problems = rng.integers(0, n, size=(draws, n))
    for arm, runs in results.items():
        r1 = np.stack([a for a, _ in runs])  # seeds x problems
        r2 = np.stack([b for _, b in runs])
        pick = rng.integers(0, len(runs), size=(draws, len(runs)))  # seeds resampled per draw
        rows, cols = pick[:, :, None], problems[:, None, :]  # draws x seeds x problems
        stats[arm] = metric_array(r1[rows, cols], r2[rows, cols]).mean(1)
    out: dict[str, Any] = {}
    for arm, runs in results.items():
        point = np.mean([metric_array(a, b) for a, b in runs], 0)
        lo, hi = np.percentile(stats[arm], [2.5, 97.5], 0)
        per_seed = [dict(zip(METRICS, map(float, metric_array(a, b)))) for a, b in runs]
        out[arm] = {"seeds": len(runs), "problems": n, "per_seed": per_seed,
                    **{m: {"mean": float(point[i]), "lo": float(lo[i]), "hi": float(hi[i])} for i, m in enumerate(METRICS)}}
    if "score" in stats:
        d = METRICS.index("delta_t1_t2")
        out["score_minus"] = {}
        for arm in results:
            if arm != "score":
                diff = stats["score"][:, d] - stats[arm][:, d]
                out["score_minus"][arm] = {"mean": float(out["score"]["delta_t1_t2"]["mean"] - out[arm]["delta_t1_t2"]["mean"]),
                                           "lo": float(np.percentile(diff, 2.5)), "hi": float(np.percentile(diff, 97.5)),
                                           "p_not_larger": float((diff <= 0).mean())}
    return out


def _pct(s: dict[str, float], signed: bool) -> str:
    def one(v: float) -> str:  # a value that rounds to zero prints as zero, never "-0.0"
        v = round(100 * v, 1) + 0.0
        return f"{v:+.1f}" if signed else f"{v:.1f}"

    return f"{one(s['mean'])} [{one(s['lo'])}, {one(s['hi'])}]"


def markdown_table(summary: dict[str, Any]) -> str:
    head = "| arm | seeds | " + " | ".join(LABELS[m] for m in METRICS) + " |"
    lines = [head, "|" + " --- |" * (len(METRICS) + 2)]
    for arm in ARMS:
        if arm in summary:
            s = summary[arm]
            lines.append(f"| {ARM_TITLES[arm]} | {s['seeds']} | " + " | ".join(_pct(s[m], m.startswith("delta")) for m in METRICS) + " |")
    return "\n".join(lines)


def _examples(by_arm: dict[str, list[dict[str, Any]]], where: str, n: int = 3) -> tuple[list[dict[str, Any]], list[str]]:
    """The first ``n`` corrections SCoRe's runs recorded, and their quotation in full."""
    examples = [ex | {"run": r["name"]} for r in by_arm.get("score", []) for ex in r.get("corrections", [])][:n]
    lines = ["", f"{where} where SCoRe's attempt 2 corrects its attempt 1 (greedy, quoted in full):"] if examples else []
    for ex in examples:
        lines += ["", f"**{ex['run']}, problem {ex['problem_index']}** (gold: {ex['gold']})", "",
                  *[f"> {label}: {text}" for label, text in (("problem", ex["problem"]), ("attempt 1", ex["attempt1"]),
                                                              ("attempt 2", ex["attempt2"]))]]
    return examples, lines


def _differences(summary: dict[str, Any]) -> list[str]:
    return [f"- Δ(t1,t2) of SCoRe minus {ARM_TITLES[arm]}: {100 * d['mean']:+.1f} points [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"
            for arm, d in summary.get("score_minus", {}).items()]


MIN_EPISODES, MIN_SEEDS = 2400, 3  # the scale: episodes per trained run, seeds per trained arm


def goal_check(summary: dict[str, Any], scale: bool = True, arms: tuple[str, ...] = ARMS) -> list[dict[str, Any]]:
    """The experiment's goal (docs/RESULTS.md 1.1 and 1.2), clause by clause, read off a summary of one problem set.

    Each clause is ``{"clause", "value", "met"}``; ``met`` is None while an arm it needs has no run yet.
    SCoRe's Δ(t1,t2) must be positive with its interval above 0, larger than that of every other arm of the design
    (``arms``) with the paired interval above 0, and its Δ_c→i at most half of its Δ_i→c; where the summary has
    ``fixed_first_attempts`` (the second design), SCoRe's fix rate on the base model's first attempts above every
    other trained arm's with its break rate no higher; with ``scale`` also the run sizes.
    """
    checks: list[dict[str, Any]] = []
    score = summary.get("score")

    def add(clause: str, value: str, met: bool | None) -> None:
        checks.append({"clause": clause, "value": value, "met": met})

    positive = "SCoRe's Δ(t1,t2) > 0, interval above 0"
    if score is None:
        add(positive, "no SCoRe run yet", None)
    else:
        add(positive, _pct(score["delta_t1_t2"], True), score["delta_t1_t2"]["lo"] > 0)
    trained = tuple(a for a in arms if a in TRAINED)
    for arm in (a for a in arms if a != "score"):
        diff = summary.get("score_minus", {}).get(arm)
        clause = f"SCoRe's Δ minus that of {ARM_TITLES[arm]}, interval above 0"
        add(clause, _pct(diff, True) if diff else "needs both runs", None if diff is None else diff["lo"] > 0)
    if score is not None:
        i2c, c2i = score["delta_i_to_c"]["mean"], score["delta_c_to_i"]["mean"]
        add("SCoRe's Δ_c→i at most half of its Δ_i→c", f"{100 * c2i:.1f} vs {100 * i2c:.1f}", c2i <= i2c / 2)
    if "fixed_first_attempts" in summary:
        fixed = summary["fixed_first_attempts"]
        for arm in (a for a in trained if a != "score"):
            clause = f"SCoRe's fix rate on the base model's first attempts above that of {ARM_TITLES[arm]}, its break rate no higher"
            mine, other = fixed.get("score"), fixed.get(arm)
            if mine is None or other is None or None in (mine["fix_rate"], other["fix_rate"], mine["break_rate"], other["break_rate"]):
                add(clause, "needs both runs", None)
                continue
            add(clause, f"fix {100 * mine['fix_rate']:.1f}% vs {100 * other['fix_rate']:.1f}%, break {100 * mine['break_rate']:.1f}% "
                f"vs {100 * other['break_rate']:.1f}%", mine["fix_rate"] > other["fix_rate"] and mine["break_rate"] <= other["break_rate"])
    if scale:
        episodes = summary.get("training_episodes_per_run", 0)
        add(f"at least {MIN_EPISODES} training episodes per run", str(episodes), episodes >= MIN_EPISODES if episodes else None)
        seeds = {arm: summary[arm]["seeds"] for arm in trained if arm in summary}
        add(f"at least {MIN_SEEDS} seeds per trained arm", ", ".join(f"{ARM_TITLES[a]} {n}" for a, n in seeds.items()) or "none",
            (len(seeds) == len(trained) and min(seeds.values()) >= MIN_SEEDS) if seeds else None)  # open before any trained run
    return checks


def goal_lines(checks: list[dict[str, Any]]) -> list[str]:
    mark = {True: "met", False: "**not met**", None: "open"}
    return [f"- {c['clause']}: {c['value']} — {mark[c['met']]}" for c in checks]


def attempts_table(by_arm: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, list[float]]]:
    """Accuracy@t1 ... @tN per arm (mean over seeds), as far as every run of the arm has attempts."""
    rows, data = [], {}
    for arm in ARMS:
        recs = by_arm.get(arm, [])
        if not recs:
            continue
        n = min(sum(1 for c in r["per_problem"] if c[1:].isdigit()) for r in recs)
        data[arm] = [float(np.mean([outcomes(r, t).mean() for r in recs])) for t in range(1, n + 1)]
    width = max((len(v) for v in data.values()), default=0)
    head = "| arm | " + " | ".join(f"Accuracy@t{t}" for t in range(1, width + 1)) + " |"
    rows = [head, "|" + " --- |" * (width + 1)]
    for arm, accs in data.items():
        rows.append(f"| {ARM_TITLES[arm]} | " + " | ".join(f"{100 * a:.1f}" for a in accs) + " |" + " — |" * (width - len(accs)))
    return "\n".join(rows), data


def _bars(ax: Any, summary: dict[str, Any], title: str) -> None:
    """The five metrics per arm with their intervals."""
    arms = [a for a in ARMS if a in summary]
    width = 0.8 / len(METRICS)
    for j, m in enumerate(METRICS):
        means = [100 * summary[a][m]["mean"] for a in arms]
        err = [[100 * (summary[a][m]["mean"] - summary[a][m]["lo"]) for a in arms], [100 * (summary[a][m]["hi"] - summary[a][m]["mean"]) for a in arms]]
        ax.bar(np.arange(len(arms)) + (j - (len(METRICS) - 1) / 2) * width, means, width, yerr=err, capsize=2, label=LABELS[m])
    ax.set_xticks(np.arange(len(arms)), [ARM_TITLES[a] for a in arms], fontsize=7)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("% of problems (95% CI)")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)


def seed_band(recs: list[dict[str, Any]], metric: str) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """A curve's mean over seeds and its range (min, max), at the iterations every seed evaluated."""
    by_seed = [{p["iteration"]: p[metric] for p in r["curves"]} for r in recs if r["curves"]]
    its = sorted(set.intersection(*map(set, by_seed))) if by_seed else []
    if not its:
        empty = np.zeros(0)
        return [], empty, empty, empty
    values = np.array([[c[i] for i in its] for c in by_seed])
    return its, values.mean(0), values.min(0), values.max(0)


def plot(summary: dict[str, Any], by_arm: dict[str, list[dict[str, Any]]], out: Path) -> Path:
    """Final metrics with intervals, on the held-out and the transfer set; validation accuracy and Δ over training
    (mean over seeds, their range shaded); the collapse diagnostic over training; accuracy over five attempts
    (the paper's Figure 8)."""
    import matplotlib  # heavy: only for the figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(19, 8.5))
    _bars(axes[0, 0], summary, f"final evaluation, {summary['num_problems']} held-out problems, greedy")
    if "transfer" in summary:
        t = summary["transfer"]
        _bars(axes[0, 2], t, f"transfer set ({', '.join(t['overrides'])}), {t['num_problems']} problems, greedy")
    else:
        axes[0, 2].set_axis_off()
    ax = axes[1, 2]  # the paper's Figure 8: accuracy over more attempts than were trained
    for arm, accs in summary.get("accuracy_by_attempt", {}).items():
        if len(accs) > 2:
            ax.plot(range(1, len(accs) + 1), [100 * a for a in accs], marker="o", color=f"C{ARMS.index(arm)}", label=ARM_TITLES[arm])
    ax.set_xticks(range(1, 1 + max((len(v) for v in summary.get("accuracy_by_attempt", {}).values()), default=2)))
    ax.set_xlabel("attempt")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("Accuracy@t1 ... @tN, mean over seeds", fontsize=9)
    if ax.lines:  # no arm evaluated beyond two attempts: nothing to label
        ax.legend(fontsize=7)
    panels = [(axes[0, 1], "accuracy_t2", "validation Accuracy@t2 (%), seeds: mean and range"),
              (axes[1, 0], "delta_t1_t2", "validation Δ(t1,t2) (points), seeds: mean and range"),
              (axes[1, 1], "answer_changed", "validation: attempt 2 changes the answer (%), seeds: mean and range")]
    # where Stage II begins for the arms that have a Stage I (the same length for all of them)
    stage2 = sorted({r["settings"]["stage1_iterations"] for arm in TRAINED for r in by_arm.get(arm, [])
                     if r.get("settings", {}).get("stage1_iterations")})
    base = by_arm.get("base")
    for bx, metric, title in panels:
        for arm in TRAINED:
            its, mean, lo, hi = seed_band(by_arm.get(arm, []), metric)
            if its:
                color = f"C{ARMS.index(arm)}"
                bx.plot(its, 100 * mean, color=color, marker="o", ms=2.5, label=ARM_TITLES[arm])
                if (lo < hi).any():
                    bx.fill_between(its, 100 * lo, 100 * hi, color=color, alpha=0.15, lw=0)
        if base and metric in base[0]["final"]:
            bx.axhline(100 * base[0]["final"][metric], color="C0", ls="--", lw=0.8, label="(a) base (held-out)")
        for x in stage2:
            bx.axvline(x, color="grey", ls=":", lw=0.8, label="Stage II begins" if x == stage2[0] else None)
        bx.axhline(0, color="grey", lw=0.5)
        bx.set_xlabel("iteration")
        bx.set_title(title, fontsize=9)
        if bx.get_legend_handles_labels()[0]:  # none before any run's curve or final metric
            bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


CURVE_METRICS = {"accuracy_t2": "validation Accuracy@t2 (%)", "delta_t1_t2": "validation Δ(t1,t2) (points)",
                 "answer_changed": "validation: attempt 2 gives another final answer (%), the collapse diagnostic",
                 "text_identical": "validation: attempt 2 copies attempt 1 verbatim (%)"}


def curve_tables(by_arm: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The learning curves as tables: per metric, one row per evaluated iteration, one column per trained arm
    (mean over seeds at the iterations every seed of the arm evaluated; "—" where it has none)."""
    lines: list[str] = []
    arms = [arm for arm in TRAINED if seed_band(by_arm.get(arm, []), "accuracy_t2")[0]]
    if not arms:
        return lines
    for metric, title in CURVE_METRICS.items():
        bands = {arm: dict(zip(*seed_band(by_arm[arm], metric)[:2])) for arm in arms}
        its = sorted({i for b in bands.values() for i in b})
        if not its:
            continue
        fmt = "{:+.1f}" if metric.startswith("delta") else "{:.1f}"
        lines += ["", f"{title}, mean over seeds:", "", "| iteration | " + " | ".join(ARM_TITLES[a] for a in arms) + " |",
                  "|" + " --- |" * (len(arms) + 1)]
        lines += [f"| {i} | " + " | ".join(fmt.format(100 * bands[a][i] + 0.0) if i in bands[a] else "—" for a in arms) + " |" for i in its]
    return lines


TRAIN_METRICS = {"reward_attempt1": "training reward of attempt 1", "reward_attempt2": "training reward of attempt 2",
                 "answer_changed": "training: sampled attempt 2 gives another final answer (%)",
                 "fixed": "training: sampled attempt 2 fixes a wrong attempt 1 (% of samples)",
                 "broken": "training: sampled attempt 2 breaks a right attempt 1 (% of samples)",
                 "zero_variance_groups": "training: groups without reward variance (% of generated)"}


def training_tables(by_arm: dict[str, list[dict[str, Any]]], window: int = 10) -> list[str]:
    """The training rows as tables: per metric, the mean over each ``window`` iterations and over seeds, one
    column per trained arm. Rewards print as fractions, the rest as percentages."""
    arms = [arm for arm in TRAINED if any(r.get("train") for r in by_arm.get(arm, []))]
    lines: list[str] = []
    for metric, title in TRAIN_METRICS.items():
        cells: dict[str, dict[int, float]] = {}
        for arm in arms:
            per_window: dict[int, list[float]] = {}
            for r in by_arm[arm]:
                for row in r.get("train", []):
                    if row.get(metric) is not None:
                        per_window.setdefault((row["iteration"] - 1) // window, []).append(row[metric])
            cells[arm] = {w: float(np.mean(v)) for w, v in per_window.items()}
        windows = sorted({w for c in cells.values() for w in c})
        if not windows:
            continue
        fmt = (lambda v: f"{v:.2f}") if metric.startswith("reward") else (lambda v: f"{100 * v:.1f}") if metric in ("fixed", "broken") \
            else (lambda v: f"{100 * v:.0f}")
        lines += ["", f"{title}, mean per {window} iterations and over seeds:", "",
                  "| iterations | " + " | ".join(ARM_TITLES[a] for a in arms) + " |", "|" + " --- |" * (len(arms) + 1)]
        lines += [f"| {w * window + 1}-{(w + 1) * window} | " + " | ".join(fmt(cells[a][w]) if w in cells[a] else "—" for a in arms) + " |"
                  for w in windows]
    return lines


def per_run_table(by_arm: dict[str, list[dict[str, Any]]], transfer: dict[str, list[dict[str, Any]]]) -> str:
    """One row per run: its own held-out (and transfer-set) Accuracy@t1, @t2 and Δ, and how often its attempt 2
    changed the final answer or copied attempt 1, so a seed that differs from the others shows."""
    moved = {r["name"]: r for recs in transfer.values() for r in recs}

    def three(rec: dict[str, Any] | None) -> str:
        if rec is None:
            return "— | — | —"
        a, b = outcomes(rec, 1).mean(), outcomes(rec, 2).mean()
        return f"{100 * a:.1f} | {100 * b:.1f} | {100 * (b - a) + 0.0:+.1f}"

    def share(rec: dict[str, Any], key: str) -> str:
        v = rec["final"].get(key)
        return "—" if v is None else f"{100 * v:.1f}%"

    lines = ["| run | Accuracy@t1 | Accuracy@t2 | Δ(t1,t2) | answer changed | attempt 2 = attempt 1 verbatim "
             "| transfer Accuracy@t1 | transfer Accuracy@t2 | transfer Δ(t1,t2) |", "|" + " --- |" * 9]
    lines += [f"| {r['name']} | {three(r)} | {share(r, 'answer_changed')} | {share(r, 'text_identical')} | {three(moved.get(r['name']))} |"
              for arm in ARMS for r in by_arm.get(arm, [])]
    return "\n".join(lines)


DEFAULT_DOCS = Path("docs/results")


def markers(doc_dir: Path = DEFAULT_DOCS) -> tuple[str, str]:
    """The pair of lines that fence the report of ``doc_dir`` in a document: one document can hold the reports of
    several designs (docs/RESULTS.md holds the second's and, in its own subsection, the first's), each rebuilt by
    the command its markers name."""
    return (f"<!-- BEGIN python -m cluster.experiment report --docs {doc_dir.as_posix()} -->",
            f"<!-- END python -m cluster.experiment report --docs {doc_dir.as_posix()} -->")


def embed(doc: Path, block: str, doc_dir: Path = DEFAULT_DOCS) -> bool:
    """Replace what stands between ``doc_dir``'s markers in ``doc`` with ``block``; False, and the file untouched,
    where it has no such pair. The prose around the markers is the author's; the block is the report's."""
    if not doc.is_file():
        return False
    begin, end = markers(doc_dir)
    text = doc.read_text()
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        return False
    # blank lines around the block: an HTML comment line opens an HTML block in Markdown until a blank line
    doc.write_text(text[: start + len(begin)] + "\n\n" + block.strip("\n") + "\n\n" + text[stop:])
    return True


def correction_rates(runs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """How often attempt 2 fixes a wrong attempt 1, and breaks a right one, pooled over seeds.

    Δ_i→c and Δ_c→i are shares of all problems, so they shrink as attempt 1 improves: a model at 90%
    has few wrong first attempts left to fix. These rates divide by the first attempts that could
    change, so arms at different Accuracy@t1 compare as self-correctors.
    """
    rates = rates_with_intervals(np.concatenate([a for a, _ in runs]), np.concatenate([b for _, b in runs]))
    return {"wrong_t1": rates["wrong_first_attempts"], "right_t1": rates["right_first_attempts"],
            "fixed": rates["fix_rate"], "broken": rates["break_rate"]}


def fixed_first_attempts(results: Path, by_arm: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each trained arm's attempt 2 on the base model's own first attempts (``fixed_first/<run>.json``, written by the
    runner), pooled over the arm's seeds: every seed corrects the same first attempts, so the pooled rate is the
    seeds' mean, with a 95% Wilson interval on the pooled counts. An arm with no such file is left out."""
    out: dict[str, dict[str, Any]] = {}
    for arm, recs in by_arm.items():
        files = [results / "fixed_first" / f"{r['name']}.json" for r in recs]
        done = [json.loads(f.read_text()) for f in files if f.exists()]
        if arm == "base" or not done:
            continue
        row: dict[str, Any] = {"runs": len(done)}
        for rate, among in (("fix_rate", "wrong_first_attempts"), ("break_rate", "right_first_attempts")):
            n = sum(d[among] for d in done)
            hits = sum(round(d[rate] * d[among]) for d in done if d[rate] is not None)
            p = hits / n if n else None
            lo, hi = wilson_interval(p, n) if n else (None, None)
            row.update({rate: p, f"{rate}_lo": lo, f"{rate}_hi": hi, among: n})
        out[arm] = row
    return out


def _fixed_first_table(fixed: dict[str, dict[str, Any]]) -> str:
    def pct(row: dict[str, Any], rate: str) -> str:
        return "—" if row[rate] is None else f"{100 * row[rate]:.1f}% [{100 * row[rate + '_lo']:.1f}, {100 * row[rate + '_hi']:.1f}]"

    lines = ["| arm | runs | wrong first attempts | fix rate [95%] | right first attempts | break rate [95%] |", "|" + " --- |" * 6]
    lines += [f"| {ARM_TITLES[arm]} | {r['runs']} | {r['wrong_first_attempts']} | {pct(r, 'fix_rate')} | {r['right_first_attempts']} "
              f"| {pct(r, 'break_rate')} |" for arm in ARMS if (r := fixed.get(arm))]
    return "\n".join(lines)


def _rates_table(rates: dict[str, dict[str, Any]]) -> str:
    def pct(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.1f}%"

    lines = ["| arm | wrong attempts 1 (all seeds) | of them right at attempt 2 | right attempts 1 | of them wrong at attempt 2 |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {ARM_TITLES[arm]} | {r['wrong_t1']} | {pct(r['fixed'])} | {r['right_t1']} | {pct(r['broken'])} |"
              for arm in ARMS if (r := rates.get(arm))]
    return "\n".join(lines)


STAGE1_KEYS = ("reward_attempt1", "reward_attempt2", "answer_changed", "zero_variance_groups", "fixed", "broken")


def stage1_agreement(by_arm: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per seed with both, how far (d)'s Stage I reproduced (b)'s: the iterations whose sampled rewards and shares
    (``STAGE1_KEYS``) are equal, and the validation evaluations that are. α enters only Stage II, so a run that
    is a deterministic function of its config and seed repeats (b)'s first ``stage1`` iterations exactly; this is
    what ``branch`` relies on to skip them. A (d) that branched shares them by construction (``branched``); one
    computed in another dtype than (b) is not compared (``dtypes``)."""
    score = {r["seed"]: r for r in by_arm.get("score", [])}
    out = []
    for d in by_arm.get("no_shaping", []):
        b = score.get(d["seed"])
        if b is None:
            continue
        n = (d.get("settings") or {}).get("stage1_iterations", 0)
        if d.get("branched_from"):
            out.append({"seed": d["seed"], "branched": True, "iterations": n})
            continue
        dtypes = {"score": dtypes_of(b), "no_shaping": dtypes_of(d)}
        if dtypes["score"] != dtypes["no_shaping"]:  # other roundings sample other tokens from the first step: nothing to compare
            out.append({"seed": d["seed"], "branched": False, "iterations": n, "dtypes": dtypes})
            continue
        rows = list(zip(b["train"][:n], d["train"][:n]))
        curves = [(x, y) for x, y in zip(b["curves"], d["curves"]) if x["iteration"] <= n]
        out.append({"seed": d["seed"], "branched": False, "iterations": n,
                    "equal_iterations": sum(all(x.get(k) == y.get(k) for k in STAGE1_KEYS) for x, y in rows),
                    "compared_iterations": len(rows), "equal_evaluations": sum(x == y for x, y in curves), "evaluations": len(curves)})
    return out


def _stage1_line(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    def one(r: dict[str, Any]) -> str:
        if r["branched"]:
            return f"seed {r['seed']}: shared by branching"
        if "dtypes" in r:
            d = r["dtypes"]
            return (f"seed {r['seed']}: not comparable, (b) computed in {', '.join(d['score']) or 'an unrecorded dtype'} "
                    f"and (d) in {', '.join(d['no_shaping']) or 'an unrecorded dtype'}")
        return (f"seed {r['seed']}: {r['equal_iterations']} of {r['compared_iterations']} iterations and {r['equal_evaluations']} of "
                f"{r['evaluations']} validation evaluations equal")

    said = [one(r) for r in rows]
    return ["", f"(d)'s Stage I against (b)'s of the same seed (sampled rewards and shares, validation curves): {'; '.join(said)}"]


def _summarize(by_arm: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Means and intervals per arm, the paired differences, the share of changed answers, and the correction
    rates, of one problem set."""
    runs = {arm: [(outcomes(r, 1), outcomes(r, 2)) for r in recs] for arm, recs in by_arm.items()}
    summary = bootstrap(runs)
    summary["num_problems"] = next(iter(summary.values()))["problems"]
    summary["answer_changed"] = {arm: float(np.mean([r["final"]["answer_changed"] for r in recs])) for arm, recs in by_arm.items()}
    summary["correction_rates"] = {arm: correction_rates(r) for arm, r in runs.items()}
    return summary


def _arms_run(by_arm: dict[str, list[dict[str, Any]]], arms: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
    """The design's arms, less (f) where SCoRe's runs took no base-model first attempts: (f) is then (e) itself
    (``cluster.experiment run`` does not run it), and the goal checks the arms that exist. Returns them and the line
    that says so."""
    shares = {r["settings"].get("stage2_base_first_attempts") for r in by_arm.get("score", []) if "settings" in r}
    if "plain_rl_base_first" in arms and "plain_rl_base_first" not in by_arm and shares == {0.0}:
        return tuple(a for a in arms if a != "plain_rl_base_first"), [
            "", f"{ARM_TITLES['plain_rl_base_first']} is not run: SCoRe took no base-model first attempts "
                "(algorithm.stage2_base_first_attempts 0), so that control is (e) itself."]
    return arms, []


def _alias_f_to_e(summary: dict[str, Any]) -> None:
    """Where (f) is not run because it is (e) itself (``_arms_run``), the JSON still carries (f)'s keys, each a copy
    of (e)'s marked ``same_run_as``: a reader of ``score_minus`` or ``fixed_first_attempts`` finds every arm the
    design names, and is told which run stands for it. Applied after the tables and the goal, which name the arms
    that ran."""
    for part in (summary, summary.get("transfer") or {}, summary.get("sampled") or {}):
        for key in ("score_minus", "fixed_first_attempts"):
            table = part.get(key) or {}
            if "plain_rl" in table and "plain_rl_base_first" not in table:
                table["plain_rl_base_first"] = table["plain_rl"] | {"same_run_as": "plain_rl"}


def report(results: Path, doc_dir: Path, embed_in: Path | None = None, design: int = max(DESIGN_ARMS)) -> int:
    """Rebuild ``self_correction.{json,md,png}`` in ``doc_dir`` from the result files under ``results``; with
    ``embed_in``, also the block between its markers (``embed``). ``design``: whose arms the goal checks (1: the
    first design's five; 2: six, (f) included, and the fix and break rates on the base model's first attempts)."""
    by_arm = load_results(results)
    if not by_arm:
        print(f"error: no result files under {results}", file=sys.stderr)
        return 2
    arms = DESIGN_ARMS[design]
    if stray := [a for a in by_arm if a not in arms]:
        print(f"error: {results} holds runs of {', '.join(stray)}, which design {design} does not have (--design)", file=sys.stderr)
        return 2
    arms, without = _arms_run(by_arm, arms)
    summary = _summarize(by_arm)
    summary["wall_seconds"] = {r["name"]: r["wall_seconds"] for recs in by_arm.values() for r in recs}
    episodes = {r["name"]: r["training_episodes"] for arm in TRAINED for r in by_arm.get(arm, [])}
    summary["training_episodes_per_run"] = min(episodes.values()) if episodes else 0
    summary["training_episodes"] = episodes
    att_md, summary["accuracy_by_attempt"] = attempts_table(by_arm)
    doc_dir.mkdir(parents=True, exist_ok=True)
    lines = [markdown_table(summary), "", *_differences(summary), *without]
    if design >= 2:
        summary["design"] = design
        summary["fixed_first_attempts"] = fixed_first_attempts(results, by_arm)
    summary["goal"] = goal_check(summary, arms=arms)
    lines += ["", "The goal, clause by clause (held-out set):", *goal_lines(summary["goal"])]
    if summary.get("fixed_first_attempts"):
        lines += ["", "Attempt 2 on the base model's own first attempts (held-out; every seed pooled, Wilson intervals):", "",
                  _fixed_first_table(summary["fixed_first_attempts"])]
    lines += ["", "Attempt 2 gives a different final answer from attempt 1 (held-out, mean over seeds): "
              + ", ".join(f"{ARM_TITLES[a]} {100 * v:.1f}%" for a, v in summary["answer_changed"].items()), "",
              "Correction rates (held-out; Δ_i→c and Δ_c→i divided by the first attempts that could change):", "",
              _rates_table(summary["correction_rates"]), "", att_md, ""]
    # The runner's wall time covers every attempt it timed (before heartbeats, an attempt stopped with the session
    # left no timing); the iterations' own seconds cover every attempt, but not start-up or evaluations.
    lines.append("| run | training episodes | zero-variance groups (of generated, mean) | runner wall time (min) "
                 "| sum of iteration times (min) | selected iteration | computed in |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    summary["iteration_seconds"], summary["zero_variance_groups"], summary["dtypes"] = {}, {}, {}
    for recs in by_arm.values():
        for r in recs:
            train = r.get("train", [])
            its = sum(row.get("seconds_iteration", 0.0) for row in train)
            zero = [row["zero_variance_groups"] for row in train if row.get("zero_variance_groups") is not None]
            summary["iteration_seconds"][r["name"]] = its
            mean_zero = summary["zero_variance_groups"][r["name"]] = float(np.mean(zero)) if zero else None
            name = r["name"] + (f" (iterations 1-{b['iteration']} are {b['run']}'s)" if (b := r.get("branched_from")) else "")
            summary["dtypes"][r["name"]] = dtypes = dtypes_of(r)
            inferred = any(m.get("recorded") is False for m in r.get("machines", []))
            lines.append(f"| {name} | {r['training_episodes']} | {'—' if mean_zero is None else f'{100 * mean_zero:.0f}%'} "
                         f"| {r['wall_seconds'] / 60:.0f} | {its / 60:.0f} | {r.get('selected_iteration') or '—'} "
                         f"| {', '.join(dtypes) or 'not recorded'}{' (inferred)' if inferred else ''} |")
    mixed = sorted({d for ds in summary["dtypes"].values() for d in ds})
    if len(mixed) > 1:  # grid.check_same_dtype refuses this unless asked: say it where the numbers are read
        lines += ["", f"**The runs computed in different dtypes ({', '.join(mixed)}): their numbers are not strictly comparable.**"]
    summary["stage1_agreement"] = stage1_agreement(by_arm)
    lines += _stage1_line(summary["stage1_agreement"])
    lines += curve_tables(by_arm) + training_tables(by_arm)
    summary["examples"], quoted = _examples(by_arm, "Held-out problems")
    lines += quoted
    transfer = load_results(results / "transfer")
    lines += ["", "Every run on its own (held-out set; the transfer set where it was evaluated):", "", per_run_table(by_arm, transfer)]
    if transfer:
        t = summary["transfer"] = _summarize(transfer)
        overrides = t["overrides"] = sorted({o for recs in transfer.values() for r in recs for o in r.get("overrides", [])})
        t["goal"] = goal_check(t, scale=False, arms=arms)
        lines += ["", f"Transfer set: {t['num_problems']} held-out problems with {', '.join(overrides)} "
                  "(the selected checkpoint of every run, greedy, two attempts):", "", markdown_table(t), "", *_differences(t),
                  "", "The goal's clauses on the transfer set:", *goal_lines(t["goal"]),
                  "", "Attempt 2 gives a different final answer on the transfer set: "
                  + ", ".join(f"{ARM_TITLES[a]} {100 * v:.1f}%" for a, v in t["answer_changed"].items()),
                  "", "Correction rates on the transfer set:", "", _rates_table(t["correction_rates"])]
        t["examples"], quoted = _examples(transfer, "Transfer-set problems")
        lines += quoted
    sampled = load_results(results / "sampled")
    if sampled:  # Δ at the training temperature beside greedy: the first design saw the shaping act on sampled attempts only
        sm = summary["sampled"] = _summarize(sampled)
        sm["overrides"] = sorted({o for recs in sampled.values() for r in recs for o in r.get("overrides", [])})
        lines += ["", f"At the training temperature ({', '.join(sm['overrides'])}): the same {sm['num_problems']} held-out problems, "
                  "one sample per attempt, beside the greedy table above:", "", markdown_table(sm), "", *_differences(sm),
                  "", "Correction rates at the training temperature:", "", _rates_table(sm["correction_rates"])]
    if without:
        _alias_f_to_e(summary)
    (doc_dir / "self_correction.json").write_text(json.dumps(summary, indent=1))
    (doc_dir / "self_correction.md").write_text("\n".join(lines) + "\n")
    png = plot(summary, by_arm, doc_dir / "self_correction.png")
    print("\n".join(lines))
    print(f"wrote {doc_dir / 'self_correction.json'}, {doc_dir / 'self_correction.md'}, {png}")
    if embed_in is not None:
        begin, end = markers(doc_dir)
        print(f"updated the report block in {embed_in}" if embed(embed_in, "\n".join(lines), doc_dir)
              else f"note: {embed_in} has no report markers ({begin} ... {end}); left as it is")
    return 0


