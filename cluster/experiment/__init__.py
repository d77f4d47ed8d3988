"""The self-correction experiment of docs/RESULTS.md: five arms x seeds, one result file per run, a report.

Modules: ``arms`` (the arms and the plan: which runs, with which overrides), ``grid`` (running the plan:
resume, timing, commits, status), ``record`` (one finished run's result file, written and read), ``report``
(intervals, the goal check, tables and figures, from the result files alone).

    python -m cluster.experiment run    --out runs/experiment [--commit]   # trains and evaluates every arm
    python -m cluster.experiment status --out runs/experiment              # which runs are done, running, left
    python -m cluster.experiment report                                     # tables, intervals, curves

Arms (the paper's ablations, Table 4, and its Figure 5 baseline):
  (a) base         the base model prompted to self-correct (evaluation only);
  (b) score        Stage I, then Stage II;
  (c) stage2_only  Stage II only, for the same total number of iterations;
  (d) no_shaping   Stage I, then Stage II with alpha = 0;
  (e) plain_rl     plain two-turn RL: no Stage I, alpha = 0, both attempts rewarded (the paper's Figure 5).

Invariants:
- every arm evaluates on the same held-out problems (``task.data_seed`` is fixed); the seed changes
  the order of training problems and the sampling; periodic evaluations use the validation split;
- each run is a separate ``python -m cluster.main`` process, so a crash loses one run;
- a finished run writes ``<results>/<run>.json`` (per-problem outcomes, curves, examples, wall time);
  those files are the experiment's record: ``run`` skips runs that have one, ``--commit`` commits each
  as it appears, and ``report`` is rebuilt from them alone, at any time, on any machine;
- an unfinished run that left a checkpoint continues from it (``--resume``); a finished one keeps its
  exported model (``hf_model``) and, unless ``--keep-checkpoints``, drops its DeepSpeed checkpoints
  (1.8 GiB each for the embedded model: thirteen runs would not fit on a small disk otherwise);
- every run (the base model too) is also evaluated on a second held-out set, the *transfer set*
  (``Plan.transfer``: the same task with numbers up to 20 by default), written to
  ``<results>/transfer/<run>.json``; on it the trained models stay below the ceiling they reach on
  the training distribution, so Δ(t1,t2) there still has room to show self-correction.
"""
