"""Per-run results -> results.json, the plots and report.md: what the experiment found, plainly.

The report is generated from the numbers alone, so every claim in it is one the numbers make: the
IXT multiplier per scale with its interval, final accuracy per arm at equal FLOPs, IXT against
filtering and against a label-only prefix, the conditioning gap, and a list of every place where
IXT does *not* win. Runs that are missing (failed or not yet evaluated) are listed, not guessed.
Left out: significance tests beyond bootstrap intervals, and any prose that is not derived from
the results (interpretation belongs to whoever reads the report).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ixt_stream.config import IxtConfig
from ixt_stream.experiment import analysis, plots
from ixt_stream.experiment.data import ARM_MODES, fingerprint, pool_name
from ixt_stream.experiment.eval_runs import result_path
from ixt_stream.experiment.train_run import milestone_tokens


def _ci(x: dict | None, fmt: str = "{:.3f}") -> str:
    if not x or x.get("mean") is None or not np.isfinite(x["mean"]):
        return "n/a"
    ci = x.get("ci")
    if not ci or any(v is None for v in ci):
        return fmt.format(x["mean"])
    return f"{fmt.format(x['mean'])} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _mult(m: dict | None) -> str:
    if not m:
        return "n/a"
    if m["status"] == "undefined":
        return "undefined (baseline never beats its start)"
    if m["status"] == "at_init":
        return "at target before training"
    ci = m["ci"]
    ci_text = "" if not ci else " [" + ", ".join("inf" if v is None else f"{v:.2f}" for v in ci) + "]"
    bound = "<= " if m["status"] == "censored" else ""
    return f"{bound}{m['value']:.2f}x{ci_text}"


def collect(cfg: IxtConfig) -> tuple[dict, list[str]]:
    """The summary of every scale with results, and the runs that have none."""
    e = cfg.experiment
    summary, missing = {"experiment": asdict(e), "scales": {}, "pools": {}}, []
    for name, scale in e.scales.items():
        results, fp = [], fingerprint(e, scale)
        for seed in scale.seeds or e.seeds:
            for arm in e.arms:
                path = result_path(e.out_dir, name, arm, seed)
                result = json.loads(path.read_text()) if path.exists() else {}
                if result and result.get("fingerprint", fp) == fp:
                    results.append(result)
                else:
                    missing.append(f"{name}/{arm}/s{seed}" + (" (stale: another config)" if result else ""))
        pool = Path(e.out_dir) / "data" / f"{pool_name(e, scale)}.jsonl"
        if pool.exists():
            summary["pools"][pool.name] = pool_stats(pool)
        if not results:
            continue
        params = results[0]["params"]
        grid = np.array([0.0] + [analysis.training_flops(params["total"], t)
                                 for t in milestone_tokens(scale.budget_tokens, scale.milestones)])
        s = analysis.summarize_scale(results, list(e.arms), grid, e.bootstrap)
        s.update(params=params, model=scale.model, responses=scale.responses, budget_tokens=scale.budget_tokens,
                 budget_flops=float(grid[-1]), pool=pool.name, lr=scale.lr,
                 examples={r["arm"]: next((x for x in r["examples"] if x["condition"] == "positive"), None)
                           for r in sorted(results, key=lambda r: -r["seed"])})
        summary["scales"][name] = s
    return summary, missing


def pool_stats(path: Path) -> dict:
    """Label counts of a pool, and for synthetic pools the critic's label per error kind."""
    labels, kinds, quotes = Counter(), Counter(), 0
    for line in path.read_text().splitlines():
        row = json.loads(line)
        labels[row["label"]] += 1
        quotes += f"'{row['reference_answer']}'" in row["critique"]  # the prefix would hold the answer
        kind = row.get("metadata", {}).get("synthetic")
        if kind:
            kinds[f"{kind}->{row['label']}"] += 1
    return {"samples": sum(labels.values()), "labels": dict(labels), "kind_to_label": dict(sorted(kinds.items())),
            "critique_quotes_reference": quotes / max(sum(labels.values()), 1)}


def findings(summary: dict) -> tuple[list[str], list[str]]:
    """(headline sentences, the places where IXT does not win), from the numbers."""
    lines, losses = [], []
    for name, s in summary["scales"].items():
        arms, mult, gap = s["arms"], s["multiplier"], s["final_gap"]
        if "ixt" not in arms or "baseline" not in arms:
            continue
        m, base, ixt = mult["ixt"], arms["baseline"]["final"], arms["ixt"]["final"]
        if m["status"] == "reached":
            how = "less" if m["value"] >= 1 else "more"
            factor = m["value"] if m["value"] >= 1 else 1 / m["value"]
            lines.append(f"**{name}**: IXT reaches the baseline's best accuracy ({m['target_accuracy']:.3f}) with "
                         f"{factor:.2f}x {how} compute (multiplier {_mult(m)}).")
        elif m["status"] == "censored":
            lines.append(f"**{name}**: IXT never reaches the baseline's best accuracy ({m['target_accuracy']:.3f}) "
                         f"within the budget (multiplier {_mult(m)}).")
        else:
            lines.append(f"**{name}**: no multiplier: {_mult(m)}.")
        lines.append(f"  At the full budget: IXT {_ci(ixt)} vs baseline {_ci(base)} (difference {_ci(gap['ixt'])}).")
        if m["status"] in ("censored",) or (m["status"] == "reached" and m["value"] < 1):
            losses.append(f"{name}: IXT is less compute-efficient than the baseline ({_mult(m)}).")
        if gap["ixt"]["mean"] < 0:
            losses.append(f"{name}: IXT ends below the baseline at equal FLOPs ({_ci(gap['ixt'])}).")
        for rival in ("filtered", "label", "ixt_dropout"):
            if rival in arms and arms[rival]["final"]["mean"] >= ixt["mean"]:
                losses.append(f"{name}: {rival} ends at or above IXT ({_ci(arms[rival]['final'])} vs {_ci(ixt)}).")
        cg = s["conditioning_gap"].get("ixt")
        if cg:
            lines.append(f"  Conditioning gap (IXT, final): positive - negative {_ci(cg['positive_minus_negative'])}, "
                         f"positive - none {_ci(cg['positive_minus_none'])}.")
            if cg["positive_minus_negative"]["mean"] <= 0:
                losses.append(f"{name}: positive conditioning is no better than negative "
                              f"({_ci(cg['positive_minus_negative'])}): the model did not learn to use the feedback.")
    return lines, losses


def markdown(cfg: IxtConfig, summary: dict, missing: list[str]) -> str:
    e = cfg.experiment
    lines, losses = findings(summary)
    md = ["# IXT in miniature: accuracy vs training FLOPs", "",
          f"Tasks: {', '.join(e.task.names)} (reasoning-gym; {e.task.eval_size} held-out prompts, seed "
          f"{e.task.eval_seed}, never trained on). Arms: {', '.join(e.arms)}. Seeds per scale: see the table. "
          f"Greedy decoding; reasoning-gym scoring. FLOPs = 6 x total parameters x tokens (prefix and prompt "
          f"tokens included). Multiplier = FLOPs the baseline needs to reach its best mean accuracy / FLOPs "
          f"the arm needs to reach the same accuracy (linear interpolation between checkpoints); 95% percentile "
          f"bootstrap over seeds ({e.bootstrap} resamples).", "", "## Result", ""]
    md += lines or ["No scale has both a baseline and an IXT result yet."]
    md += ["", "### Where IXT does not win", ""] + ([f"- {x}" for x in losses] or ["- Nowhere in these runs."])
    md += ["", "## Scales", "",
           "| scale | model | data | non-emb params | total params | budget tokens | budget FLOPs | lr | seeds |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary["scales"].items():
        p = s["params"]
        md.append(f"| {name} | {s['model']} | {s['pool']} | {p['non_embedding'] / 1e6:.3f}M | "
                  f"{p['total'] / 1e6:.2f}M | {s['budget_tokens']:,} | {s['budget_flops']:.2e} | {s['lr']:g} | "
                  f"{len(s['arms']['baseline']['seeds']) if 'baseline' in s['arms'] else 0} |")
    arms = [a for a in e.arms if any(a in s["arms"] for s in summary["scales"].values())]
    md += ["", "## Final accuracy at equal FLOPs (mean [95% CI] over seeds)", "",
           "| scale | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for name, s in summary["scales"].items():
        md.append(f"| {name} | " + " | ".join(_ci(s["arms"].get(a, {}).get("final")) for a in arms) + " |")
    md += ["", "Accuracy scores the tagged answer, else the last number in the response (as `ixt eval`). "
           "Strict accuracy (tagged answers only):", "",
           "| scale | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for name, s in summary["scales"].items():
        md.append(f"| {name} | " + " | ".join(_ci(s["arms"].get(a, {}).get("final_strict")) for a in arms) + " |")
    md += ["", "## Compute-efficiency multiplier over the baseline", "",
           "| scale | " + " | ".join(a for a in arms if a != "baseline") + " |", "|---|" + "---|" * (len(arms) - 1)]
    for name, s in summary["scales"].items():
        md.append(f"| {name} | " + " | ".join(_mult(s["multiplier"].get(a)) for a in arms if a != "baseline") + " |")
    md += ["", "`<=` marks an upper bound: the arm never reached the baseline's best accuracy within the budget.", "",
           "## Conditioning gap at the final checkpoint", "", "| scale | arm | positive | none | negative |",
           "|---|---|---|---|---|"]
    for name, s in summary["scales"].items():
        for arm, a in s["arms"].items():
            if a["mode"] != "none":
                c = a["final_conditions"]
                cells = " | ".join(_ci(c.get(k)) for k in ("positive", "none", "negative"))
                md.append(f"| {name} | {arm} | {cells} |")
    md += ["", "## Training data", ""]
    for pool, st in summary["pools"].items():
        md.append(f"- `{pool}`: {st['samples']} samples, critic labels {st['labels']}"
                  + (f"; error kind -> label {st['kind_to_label']}" if st["kind_to_label"] else "")
                  + f"; {st['critique_quotes_reference']:.0%} of critiques quote the reference answer verbatim "
                  "(an IXT prefix the model can copy from in training but never sees at inference)")
    md += ["", "## Runs", "", "| scale | arm | samples seen | epochs | answered (final) | train s |",
           "|---|---|---|---|---|---|"]
    for name, s in summary["scales"].items():
        for arm, a in s["arms"].items():
            md.append(f"| {name} | {arm} | {a['samples_seen']:.0f} | {a['epochs']:.1f} | {a['answered']:.2f} | "
                      f"{a['train_seconds']:.0f} |")
    md += ["", "## What the models write (final checkpoint, first held-out prompt, inference condition)", ""]
    for name, s in summary["scales"].items():
        for arm, x in s.get("examples", {}).items():
            if x:
                text = " ".join(x["response"].split())[:220].replace("|", "/")
                md.append(f"- {name} / {arm} (score {x['score']:g}): `{text}`")
    if missing:
        md += ["", f"Missing runs (failed or not evaluated): {', '.join(missing)}."]
    md += ["", "## Figures", "", "![accuracy vs FLOPs](accuracy_vs_flops.png)", "",
           "![multiplier vs size](multiplier_vs_size.png)", "", "![conditioning](conditioning.png)", "",
           "Arm modes: " + ", ".join(f"{a} = {ARM_MODES[a]}" for a in e.arms) + ". Data: results.json.", ""]
    return "\n".join(md)


def write_report(cfg: IxtConfig, folder: Path) -> list[str]:
    """Write results.json, the plots and report.md into `folder`; returns the headline lines."""
    summary, missing = collect(cfg)
    summary["missing_runs"] = missing
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(analysis.finite(summary), indent=1, allow_nan=False))
    plots.all_plots(analysis.finite(summary), folder)
    (folder / "report.md").write_text(markdown(cfg, summary, missing))
    lines, losses = findings(summary)
    return lines + [f"not a win: {x}" for x in losses]
