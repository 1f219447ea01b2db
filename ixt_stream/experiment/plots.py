"""The experiment's figures (matplotlib, Agg backend, PNG), drawn from results.json's summary only.

On log-compute axes the initial model (0 FLOPs, 0 tokens) is drawn at half the first checkpoint,
with an open marker, so every curve starts where training starts.
Left out: interactive plots.
"""

from __future__ import annotations

from pathlib import Path

PLOTS = {
    "curves_flops.png": "greedy accuracy and expert loss vs training FLOPs, per size (initial model included)",
    "curves_tokens.png": "the same vs data (loss) tokens",
    "multiplier.png": "multipliers over the baseline vs target (pilot size) and vs size (expert-loss target)",
    "conditioning.png": "conditioning gaps (positive - negative, positive - none) with the shuffled control",
    "critic_confusion.png": "the critic: author -> label, per mixture",
    "error_kinds.png": "error kinds of wrong greedy answers per arm (pilot size, final checkpoint)",
    "mixtures.png": "filtered vs IXT (and the baseline) across mixtures, pilot size",
}
COLORS = {"baseline": "#444444", "filtered": "#1f77b4", "ixt": "#d62728", "label": "#2ca02c", "shuffled": "#9467bd",
          "ixt_dropout": "#ff7f0e"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Lay out, write and release one figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def _x(xs: list[float]) -> list[float]:
    return [xs[1] / 2, *xs[1:]] if len(xs) > 1 else xs


def curves(summary: dict, path: Path, axis: str) -> None:
    plt = _plt()
    sizes = [n for n, s in summary["sizes"].items() if s.get("arms")]
    fig, axes = plt.subplots(2, max(len(sizes), 1), figsize=(4.2 * max(len(sizes), 1), 6.4), squeeze=False)
    for j, name in enumerate(sizes):
        for arm, a in summary["sizes"][name]["arms"].items():
            x = _x(a[axis])
            for i, key in enumerate(("greedy", "expert_loss")):
                ax = axes[i][j]
                ax.plot(x[1:], a[key][1:], marker="o", ms=3, label=arm, color=COLORS.get(arm))
                ax.plot(x[:1], a[key][:1], marker="o", mfc="none", color=COLORS.get(arm))
                ax.set_xscale("log")
                ax.grid(alpha=0.3)
        axes[0][j].set_title(name, fontsize=9)
        axes[1][j].set_xlabel("training FLOPs" if axis == "flops" else "data tokens")
    axes[0][0].set_ylabel("held-out greedy accuracy")
    axes[1][0].set_ylabel("expert-solution loss")
    axes[0][-1].legend(fontsize=7)
    _save(fig, path)


def multiplier(summary: dict, path: Path) -> None:
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    pilot = summary["sizes"].get(summary["pilot_size"], {})
    for arm, m in pilot.get("multipliers", {}).items():
        targets = list(m)
        ys = [m[t]["value"] if m[t]["value"] is not None else float("nan") for t in targets]
        left.plot(range(len(targets)), ys, marker="o", label=arm, color=COLORS.get(arm))
        left.set_xticks(range(len(targets)), targets, fontsize=7)
    left.set_title(f"multiplier vs target ({summary['pilot_size']})", fontsize=9)
    arms = sorted({a for s in summary["sizes"].values() for a in s.get("multipliers", {})})
    for arm in arms:
        xs, ys, lo, hi = [], [], [], []
        for s in summary["sizes"].values():
            m = s.get("multipliers", {}).get(arm, {}).get("expert loss")
            if m and m["value"] is not None:
                xs.append(next(iter(s["arms"].values()))["shape"]["non_embedding"])
                ys.append(m["value"])
                ci = m.get("ci") or [m["value"], m["value"]]
                lo.append(max(m["value"] - ci[0], 0.0))  # a bootstrap interval need not hold the point
                hi.append(max(ci[1] - m["value"], 0.0))
        if xs:
            right.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=arm, color=COLORS.get(arm))
    right.set_xscale("log")
    right.set_xlabel("non-embedding parameters")
    right.set_title("multiplier vs size (expert-loss target)", fontsize=9)
    for ax in (left, right):
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_ylabel("compute multiplier over baseline")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def conditioning(summary: dict, path: Path) -> None:
    plt = _plt()
    bars = [(n, arm, g) for n, s in summary["sizes"].items() for arm, g in s.get("conditioning", {}).items()]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(bars) + 2), 3.6))
    for k, key in enumerate(("positive_minus_negative", "positive_minus_none")):
        xs = [i + (k - 0.5) * 0.35 for i in range(len(bars))]
        ys = [g[key]["point"] for _, _, g in bars]
        err = [[g[key]["point"] - g[key]["ci"][0] if g[key].get("ci") else 0 for _, _, g in bars],
               [g[key]["ci"][1] - g[key]["point"] if g[key].get("ci") else 0 for _, _, g in bars]]
        ax.bar(xs, ys, width=0.35, yerr=err, capsize=2, label=key.replace("_", " "))
    ax.set_xticks(range(len(bars)), [f"{n}\n{a}" for n, a, _ in bars], fontsize=7)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("greedy accuracy gap (final)")
    ax.set_title("conditioning gaps; shuffled = negative control", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def critic_confusion(summary: dict, path: Path) -> None:
    plt = _plt()
    corpora = summary["corpora"]
    fig, axes = plt.subplots(1, max(len(corpora), 1), figsize=(3.6 * max(len(corpora), 1), 3.2), squeeze=False)
    labels = ["good", "mixed", "bad"]
    for ax, (mixture, c) in zip(axes[0], corpora.items(), strict=False):
        authors = sorted({k.split("->")[0] for k in c["author_to_label"]})
        grid = [[c["author_to_label"].get(f"{a}->{lab}", 0) for lab in labels] for a in authors]
        ax.imshow(grid, cmap="Blues")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
        ax.set_xticks(range(3), labels, fontsize=7)
        ax.set_yticks(range(len(authors)), authors, fontsize=7)
        ax.set_title(f"{mixture}: author -> critic label", fontsize=8)
    _save(fig, path)


def error_kinds(summary: dict, path: Path) -> None:
    plt = _plt()
    arms = summary["sizes"].get(summary["pilot_size"], {}).get("arms", {})
    kinds = sorted({k for a in arms.values() for k in a["kinds"]})
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(arms) + 2), 3.4))
    bottom = [0] * len(arms)
    for kind in kinds:
        ys = [a["kinds"].get(kind, 0) for a in arms.values()]
        ax.bar(range(len(arms)), ys, bottom=bottom, label=kind)
        bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
    ax.set_xticks(range(len(arms)), list(arms), fontsize=7)
    ax.set_ylabel("wrong greedy answers (all seeds)")
    ax.set_title(f"error kinds ({summary['pilot_size']}, final)", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def mixtures(summary: dict, path: Path) -> None:
    plt = _plt()
    names = list(summary["mixtures"])
    arms = [a for a in ("baseline", "filtered", "ixt")
            if any(a in s.get("arms", {}) for s in summary["mixtures"].values())]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(names) + 1.5), 3.4))
    for k, arm in enumerate(arms):
        ys = [summary["mixtures"][m].get("arms", {}).get(arm, {}).get("greedy", [0])[-1] for m in names]
        ax.bar([i + (k - (len(arms) - 1) / 2) * 0.25 for i in range(len(names))], ys, width=0.25, label=arm,
               color=COLORS.get(arm))
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("final greedy accuracy")
    ax.set_title(f"filtered vs IXT across mixtures ({summary['pilot_size']})", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def all_plots(summary: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    curves(summary, folder / "curves_flops.png", "flops")
    curves(summary, folder / "curves_tokens.png", "data_tokens")
    multiplier(summary, folder / "multiplier.png")
    conditioning(summary, folder / "conditioning.png")
    critic_confusion(summary, folder / "critic_confusion.png")
    error_kinds(summary, folder / "error_kinds.png")
    mixtures(summary, folder / "mixtures.png")
    return [folder / p for p in PLOTS]
