"""The experiment's figures (matplotlib, Agg backend, PNG): curves, multipliers, conditioning.

  accuracy_vs_flops.png   one panel per scale: held-out accuracy vs training FLOPs, the seed mean
                          of each arm as a line and its seed min-max as a band (log FLOPs axis,
                          so the untrained point at 0 FLOPs is not drawn)
  multiplier_vs_size.png  compute-efficiency multiplier over the baseline vs total parameters, per
                          arm, with its bootstrap 95% interval; a censored value (the arm never
                          reached the baseline's best) is an upper bound, drawn as a down triangle
  conditioning.png        final accuracy of the conditioned arms under positive / none / negative

Left out: interactive plots and per-task breakdowns.
"""

from __future__ import annotations

from pathlib import Path

COLORS = {"baseline": "#444444", "filtered": "#1f77b4", "ixt": "#d62728", "label": "#2ca02c",
          "ixt_dropout": "#ff7f0e"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_vs_flops(summary: dict, path: Path) -> Path:
    plt = _plt()
    scales = list(summary["scales"])
    fig, axes = plt.subplots(1, len(scales), figsize=(4.2 * len(scales), 3.6), squeeze=False)
    for ax, name in zip(axes[0], scales, strict=True):
        s = summary["scales"][name]
        grid = s["grid_flops"][1:]
        for arm, a in s["arms"].items():
            color = COLORS.get(arm)
            ax.plot(grid, a["mean"][1:], marker="o", ms=3, label=arm, color=color)
            ax.fill_between(grid, a["low"][1:], a["high"][1:], alpha=0.15, color=color)
        ax.set_xscale("log")
        p = s["params"]
        ax.set_title(f"{name}: {p['non_embedding'] / 1e6:.2f}M non-emb / {p['total'] / 1e6:.1f}M total", fontsize=9)
        ax.set_xlabel("training FLOPs (6 N D)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out accuracy (greedy)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def multiplier_vs_size(summary: dict, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    arms = sorted({a for s in summary["scales"].values() for a in s["multiplier"]})
    drawn = 0
    for k, arm in enumerate(arms):
        for s in summary["scales"].values():
            m = s["multiplier"].get(arm)
            if m is None or m["value"] is None:
                continue
            x = s["params"]["total"] * (1 + 0.04 * (k - len(arms) / 2))  # small offset per arm
            marker = "v" if m["status"] == "censored" else "o"
            drawn += 1
            if m["ci"] and all(v is not None for v in m["ci"]):
                lo, hi = m["ci"]
                ax.errorbar([x], [m["value"]], yerr=[[max(m["value"] - lo, 0)], [max(hi - m["value"], 0)]],
                            fmt=marker, color=COLORS.get(arm), capsize=3)
            else:
                ax.plot([x], [m["value"]], marker, color=COLORS.get(arm))
        ax.plot([], [], "o", color=COLORS.get(arm), label=arm)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no multiplier defined\n(the baseline never beat its initial accuracy)",
                ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_xlabel("total parameters (embedding included)")
    ax.set_ylabel("FLOPs multiplier over baseline")
    ax.set_title("compute efficiency vs model size (v = upper bound)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def conditioning(summary: dict, path: Path) -> Path:
    plt = _plt()
    bars = [(name, arm, a["final_conditions"]) for name, s in summary["scales"].items()
            for arm, a in s["arms"].items() if a["mode"] != "none"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(bars) + 1.5), 3.6))
    for j, condition in enumerate(("positive", "none", "negative")):
        xs = [i + (j - 1) * 0.27 for i in range(len(bars))]
        ys = [c.get(condition, {}).get("mean", 0.0) for _, _, c in bars]
        err = [[max(c[condition]["mean"] - c[condition]["ci"][0], 0) if condition in c else 0 for _, _, c in bars],
               [max(c[condition]["ci"][1] - c[condition]["mean"], 0) if condition in c else 0 for _, _, c in bars]]
        ax.bar(xs, ys, width=0.27, yerr=err, capsize=2, label=condition)
    ax.set_xticks(range(len(bars)), [f"{n}\n{a}" for n, a, _ in bars], fontsize=8)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("final held-out accuracy")
    ax.set_title("conditioning at evaluation (seed mean, 95% CI)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def all_plots(summary: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [accuracy_vs_flops(summary, folder / "accuracy_vs_flops.png"),
            multiplier_vs_size(summary, folder / "multiplier_vs_size.png"),
            conditioning(summary, folder / "conditioning.png")]
