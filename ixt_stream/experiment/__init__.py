"""`ixt experiment`: feedback-conditioned pre-training in miniature, with controls and honest statistics.

Arms (baseline, filtered, IXT critique, label-only, shuffled critiques, IXT with feedback dropout)
x Llama sizes x seeds, pre-trained from scratch at equal FLOPs in one data order on a synthetic
corpus of worked arithmetic whose authors differ in quality, critiqued by a process verifier behind
the real reward service; accuracy and expert loss vs FLOPs, the compute multiplier with a
hierarchical paired bootstrap, plots and a report.

    main.py       the command: data, lr sweep, pilot gate, runs, report
    world.py      problems (held out by problem), authors, mixtures, the word tokenizer
    data.py       corpora critiqued through the reward service; each arm's order and prefix
    model.py      a Llama from a size config, its loss and EMA
    train_run.py  one run in one process, measured at sqrt(2)-spaced checkpoints
    measure.py    greedy/sampled accuracy, expert loss, error kinds
    analysis.py   FLOPs, monotone curves, multiplier, bootstrap (numpy only)
    plots.py, report.py   figures, invariants, results.json and report.md
"""
