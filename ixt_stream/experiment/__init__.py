"""`ixt experiment`: reproduce the paper's claim in miniature.

Arms (baseline, filtered, IXT, label-only, IXT with feedback dropout) x model scales x seeds, all on
one annotated pool per scale, the same data order and the same token budget; held-out accuracy at
FLOPs milestones; the compute-efficiency multiplier with bootstrap intervals; plots and a report.

    main.py       the command: plan jobs, run them as subprocesses, write the report
    data.py       annotated pools (real reward service) and each arm's training order
    train_run.py  one run in one learner process, state dicts at FLOPs milestones
    eval_runs.py  one vLLM engine per scale, weights swapped per checkpoint
    analysis.py   FLOPs, curves, multiplier, bootstrap (numpy only)
    plots.py, report.py   figures, results.json and report.md
"""
