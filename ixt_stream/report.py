"""A run's one page: `report.md` in the run folder, with pictures where people would rather look.

`render(run_dir)` reads what a run leaves behind and writes `report.md` plus PNGs beside it
(image links are relative, so the folder can be moved or zipped):

  before / after        summary.json (the main job): accuracy per condition, base model (the
                        control) vs trained, after - before with its paired 95% CI, and the
                        positive - negative gap before and after
  accuracy.png          every `ixt eval` report in the folder (eval_before.json = the base model,
                        eval_after.json = the final weights, any other eval JSON = its file name):
                        accuracy per condition at each evaluated checkpoint, 95% bootstrap CIs
  learning_curve.png    metrics/learner.jsonl through `metrics.plot_curves` (drawn if missing)
  weights.png           weight versions: when the learner published each and when each generator
                        applied it (metrics JSONL), with push seconds and samples per version
  ledger                the conservation equation (ledger.sqlite, else summary.json's copy)
  samples               a few trained samples with their critiques and their fate in the ledger
                        (critiques.jsonl, which `SampleLog` keeps bounded), and a few held-out
                        responses per condition with their scores

A missing piece gets a one-line note saying which file was absent, never a guess or a crash.
Left out: HTML, per-task breakdowns, and comparisons across runs (`ixt experiment` has its own
report); the numbers are read, not recomputed, except each accuracy's bootstrap interval.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from pathlib import Path

from ixt_stream.ledger import Ledger
from ixt_stream.metrics import plot_curves, read_jsonl
from ixt_stream.types import Critique, Label, Sample

SAMPLE_LOG = "critiques.jsonl"
LEARNER_CURVES = ["train/loss", "critique/score_mean", "learner/samples_per_s", "weights/version"]
"""The learning curves the main job and the report draw from metrics/learner.jsonl."""
_TEXT_CHARS = 2000


class SampleLog:
    """The first `per_version` critiqued samples of each weight version, one JSON line each in
    `run_dir/critiques.jsonl`: the report's examples of what was trained on, with the critique.
    Nothing else records sample text, so this stays bounded (per_version x versions lines)."""

    def __init__(self, run_dir: str | Path, per_version: int = 2):
        self.path = Path(run_dir) / SAMPLE_LOG
        self.per_version = per_version
        self._counts: Counter[int] = Counter()

    def add(self, sample: Sample, critique: Critique) -> None:
        if self._counts[sample.weight_version] >= self.per_version:
            return
        self._counts[sample.weight_version] += 1
        row = {"sample_id": sample.sample_id, "weight_version": sample.weight_version,
               "prompt": sample.prompt[:_TEXT_CHARS], "response": sample.response[:_TEXT_CHARS],
               "reference_answer": sample.reference_answer, "score": critique.score,
               "label": Label(critique.label).name.lower(),
               "critique": critique.critique[:_TEXT_CHARS]}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


# -- reading ------------------------------------------------------------------------------------

def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def eval_reports(run_dir: Path) -> dict[str, dict]:
    """Checkpoint label -> `ixt eval` report, in order: the base model, other checkpoints, final."""
    found = {p: r for p in sorted(run_dir.glob("*.json"))
             if isinstance(r := _json(p), dict) and {"metrics", "samples", "conditions"} <= r.keys()}
    rank = {"eval_before": 0, "eval_after": 2}
    label = {"eval_before": "base (control)", "eval_after": "final"}
    ordered = sorted(found, key=lambda p: (rank.get(p.stem, 1), p.stem))
    return {label.get(p.stem, p.stem): found[p] for p in ordered}


def accuracy_ci(report: dict, resamples: int = 2000) -> dict[str, dict[str, float]]:
    """condition -> the mean exact score with its 95% bootstrap interval over problems."""
    from ixt_stream.offline.paired import paired_ci, scores_by_condition

    out = {}
    for c, by_id in scores_by_condition(report).items():
        scores = list(by_id.values())
        out[c] = paired_ci([0.0] * len(scores), scores, resamples)  # b - 0: the mean of b
    return out


def weight_versions(run_dir: Path) -> list[dict]:
    """One row per version the learner published: step, time, push seconds, when each generator
    first ran it (all times in minutes since the run's first logged metric)."""
    metrics = run_dir / "metrics"
    learner = read_jsonl(metrics / "learner.jsonl") if (metrics / "learner.jsonl").exists() else []
    generators = {p.stem: read_jsonl(p) for p in sorted(metrics.glob("generator-*.jsonl"))}
    starts = [rows[0]["time"] for rows in [learner, *generators.values()] if rows]
    if not learner or not starts:
        return []
    t0 = min(starts)
    out, seen = [], 0
    for r in learner:
        v = int(r.get("weights/version", 0))
        if v > seen:
            seen = v
            applied = {g: next(((x["time"] - t0) / 60 for x in rows if x.get("weights/version", 0) >= v), None)
                       for g, rows in generators.items()}
            out.append({"version": v, "step": r["step"], "minute": (r["time"] - t0) / 60,
                        "push_s": r.get("weights/push_s"), "applied_minute": applied})
    return out


# -- pictures -----------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(cis: dict[str, dict[str, dict[str, float]]], out: Path) -> Path:
    """Accuracy per condition (one line each, 95% CI bars) at each evaluated checkpoint."""
    plt = _plt()
    labels = list(cis)
    conditions = list(dict.fromkeys(c for by in cis.values() for c in by))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.8 * len(labels) + 2), 3.6))
    for k, c in enumerate(conditions):
        xs = [i + 0.06 * (k - (len(conditions) - 1) / 2) for i, lab in enumerate(labels) if c in cis[lab]]
        pts = [cis[lab][c] for lab in labels if c in cis[lab]]
        ys = [p["diff"] for p in pts]
        err = [[y - p["lo"] for y, p in zip(ys, pts, strict=True)], [p["hi"] - y for y, p in zip(ys, pts, strict=True)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=c)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_ylabel("held-out exact accuracy")
    ax.set_title("accuracy under each condition (95% bootstrap CI)")
    return _save(plt, fig, ax, out)


def plot_weights(run_dir: Path, out: Path) -> Path:
    """Weight version over wall time: published by the learner, applied by each generator."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    files = [run_dir / "metrics" / "learner.jsonl", *sorted((run_dir / "metrics").glob("generator-*.jsonl"))]
    series = {p.stem: read_jsonl(p) for p in files if p.exists()}
    t0 = min(rows[0]["time"] for rows in series.values() if rows)
    for name, rows in series.items():
        pts = [((r["time"] - t0) / 60, r["weights/version"]) for r in rows if "weights/version" in r]
        if pts:
            ax.step(*zip(*pts, strict=True), where="post",
                    label=f"{name} ({'published' if name == 'learner' else 'applied'})")
    ax.set_xlabel("minutes since the first logged metric")
    ax.set_ylabel("weight version")
    ax.set_title("weight versions: pushed by the learner, reloaded by the generators")
    return _save(plt, fig, ax, out)


def _save(plt, fig, ax, out: Path) -> Path:
    """Grid, legend, tight layout, PNG; the figure is closed (renders run in long processes)."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# -- markdown -----------------------------------------------------------------------------------

def _md(text: str, limit: int = 400) -> str:
    """One line of text safe in markdown and its tables: tags like <answer> are escaped, so they
    stay visible instead of being read as HTML (which is also why nothing goes in code spans)."""
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[:limit] + " …"
    return html.escape(text).replace("|", "\\|")


def _ci(c: dict) -> str:
    return f"{c['diff']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"


def _acc(c: dict | None) -> str:
    return "—" if c is None or math.isnan(c["diff"]) else f"{c['diff']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"


def _note(what: str) -> list[str]:
    return [f"_Not available: {what}._", ""]


def _before_after(summary: dict | None) -> list[str]:
    lines = ["## Before and after training", ""]
    if summary is None:
        return lines + _note("no summary.json in this folder (written when the main job `ixt run` finishes)")
    before, after, change = summary["accuracy_before"], summary["accuracy_after"], summary["change"]
    lines += [f"{summary['eval_problems']} held-out problems, none in the training stream; exact accuracy; "
              "the base model is the control (the base model under the very same prefixes); "
              "after - before with its paired bootstrap 95% CI over problems.", "",
              "| condition | base model | trained | after - before [95% CI] |", "|---|---:|---:|---:|"]
    for c in after:
        b = f"{before[c]:.3f}" if c in before else "—"
        lines.append(f"| {c} | {b} | {after[c]:.3f} | {_ci(change[c]) if c in change else '—'} |")
    if "gap" in change:
        lines += ["", f"Positive - negative gap: base {_ci(summary['gap_before'])} -> trained "
                  f"{_ci(summary['gap_after'])}; change {_ci(change['gap'])}."]
    lines += ["", f"Positive prefix (the feedback most often trained with label good at the best score): "
              f"“{_md(summary.get('positive_prefix', ''))}”", ""]
    return lines


def _checkpoints(run_dir: Path, reports: dict[str, dict]) -> list[str]:
    lines = ["## Accuracy at each evaluated checkpoint", ""]
    if not reports:
        return lines + _note("no `ixt eval` report (eval_before.json, eval_after.json, eval.json) in this folder")
    missing = [f for f, label in (("eval_before.json", "base (control)"), ("eval_after.json", "final"))
               if label not in reports]
    if missing and (run_dir / "summary.json").exists():
        lines += _note(f"{', '.join(missing)} (that checkpoint is not drawn)")
    cis = {label: accuracy_ci(r) for label, r in reports.items()}
    png = plot_accuracy(cis, run_dir / "accuracy.png")
    conditions = list(dict.fromkeys(c for by in cis.values() for c in by))
    lines += [f"![accuracy per condition at each checkpoint]({png.name})", "",
              "| condition | " + " | ".join(cis) + " |", "|---|" + "---:|" * len(cis)]
    lines += [f"| {c} | " + " | ".join(_acc(by.get(c)) for by in cis.values()) + " |" for c in conditions]
    gaps = [r.get("gap_ci") for r in reports.values()]
    if any(gaps):
        lines.append("| positive - negative | " + " | ".join(_ci(g) if g else "—" for g in gaps) + " |")
    lines += ["", "Accuracy with its 95% bootstrap interval over problems; models: "
              + "; ".join(f"{label}: `{r.get('model', '?')}`" for label, r in reports.items()), ""]
    return lines


def _curves(run_dir: Path) -> list[str]:
    lines = ["## Learning curves", ""]
    png, metrics = run_dir / "learning_curve.png", run_dir / "metrics" / "learner.jsonl"
    if not png.exists() and metrics.exists():
        plot_curves([metrics], png, keys=LEARNER_CURVES)
    if not png.exists():
        return lines + _note("no metrics/learner.jsonl (no training in this folder)")
    return lines + [f"![learning curves]({png.name})", ""]


def _weights(run_dir: Path, summary: dict | None, ledger: dict | None) -> list[str]:
    lines = ["## Weight versions", ""]
    rows = weight_versions(run_dir)
    if not rows:
        return lines + _note("no metrics/learner.jsonl with weight versions")
    png = plot_weights(run_dir, run_dir / "weights.png")
    per_version = (ledger or {}).get("samples_by_weight_version", {})
    gens = list(rows[0]["applied_minute"])
    lines += [f"![weight versions over time]({png.name})", "",
              "| version | learner step | pushed at (min) | push s | "
              + " | ".join(f"{g} applied at (min)" for g in gens) + " | samples generated with it |",
              "|---:|---:|---:|---:|" + "---:|" * (len(gens) + 1)]
    for r in rows:
        applied = [f"{m:.1f}" if m is not None else "never" for m in r["applied_minute"].values()]
        push = f"{r['push_s']:.2f}" if isinstance(r["push_s"], (int, float)) else "—"
        n = per_version.get(str(r["version"]), per_version.get(r["version"], "—"))
        lines.append(f"| {r['version']} | {r['step']} | {r['minute']:.1f} | {push} | "
                     + " | ".join(applied) + f" | {n} |")
    if summary is not None:
        lines += ["", f"{summary['versions_pushed']} versions pushed in {summary['steps']} steps; "
                  f"{summary['samples_trained']} samples trained; learner busy "
                  f"{100 * summary['learner_busy_fraction']:.0f}%; staleness (versions behind -> samples): "
                  f"{summary.get('staleness', {})}."]
    return lines + [""]


def _ledger(ledger: dict | None) -> list[str]:
    lines = ["## The sample ledger", ""]
    if ledger is None:
        return lines + _note("no ledger.sqlite and no summary.json")
    verdict = "conserved" if ledger["conserved"] else "**VIOLATED**"
    return lines + [
        f"generated {ledger['generated']} = trained {ledger['trained']} + dropped {ledger['dropped']} "
        f"+ in flight {ledger['in_flight']}; trained twice {ledger['trained_twice']}; trained without a "
        f"critique {ledger.get('trained_without_critique', 0)} -> {verdict}", "",
        f"Dropped, by reason: {ledger.get('dropped_by_reason', {})}", ""]


def _trained_samples(run_dir: Path, how_many: int) -> list[str]:
    lines = ["## Samples trained on, with their critiques", ""]
    path = run_dir / SAMPLE_LOG
    if not path.exists():
        return lines + _note(f"no {SAMPLE_LOG} (the orchestrator records the first samples of each weight version)")
    rows = read_jsonl(path)
    by_version: dict[int, list[dict]] = {}
    for r in rows:
        by_version.setdefault(r["weight_version"], []).append(r)
    versions = sorted(by_version)
    k = min(how_many, len(versions))  # k versions spread from the first to the last
    picks = [by_version[versions[round(i * (len(versions) - 1) / max(k - 1, 1))]][0] for i in range(k)]
    fate = {}
    if (run_dir / "ledger.sqlite").exists():
        fate = Ledger(run_dir / "ledger.sqlite").states([r["sample_id"] for r in picks])
    lines += [f"The first critiqued sample of {len(picks)} weight versions (from {SAMPLE_LOG}); the fate is "
              "the ledger's.", ""]
    for r in picks:
        state, step, reason = fate.get(r["sample_id"], ("unknown", None, None))
        where = f"trained at step {step}" if state == "trained" else f"{state}{f' ({reason})' if reason else ''}"
        lines += [f"**v{r['weight_version']} · score {r['score']:.2f} · label {r['label']} · {where}**", "",
                  f"- prompt: {_md(r['prompt'])}", f"- response: {_md(r['response'], 300)}",
                  f"- reference answer: {_md(r.get('reference_answer', ''))}",
                  f"- critique: *{_md(r['critique'])}*", ""]
    return lines


def _eval_samples(reports: dict[str, dict], per_condition: int) -> list[str]:
    lines = ["## Held-out responses", ""]
    if not reports:
        return lines + _note("no `ixt eval` report")
    label, report = list(reports.items())[-1]
    feedback = report.get("feedback", {})
    lines += [f"From the {label} checkpoint: per condition, a right and a wrong answer where there is one.", ""]
    for c in report["conditions"]:
        rows = [s for s in report["samples"] if s["condition"] == c]
        picks = [s for s in (next((s for s in rows if s["score"] > 0), None),
                             next((s for s in rows if s["score"] <= 0), None)) if s][:per_condition]
        prefix = feedback.get(c, [None, ""])[1] if c in feedback else ""
        lines += [f"**{c}**" + (f" — prefix: *{_md(prefix, 200)}*" if prefix else ""), ""]
        lines += [f"- score {s['score']:.0f} · {_md(s.get('prompt', s['prompt_id']), 200)}"
                  + (f" (answer {_md(s['answer'])})" if "answer" in s else "")
                  + f" -> {_md(s['response'], 300)}" for s in picks]
        lines.append("")
    return lines


def render(run_dir: str | Path, samples: int = 4) -> Path:
    """Write `run_dir/report.md` (and its PNGs) from whatever the run folder holds; returns its path."""
    run_dir = Path(run_dir)
    summary = _json(run_dir / "summary.json")
    ledger = Ledger(run_dir / "ledger.sqlite").summary() if (run_dir / "ledger.sqlite").exists() else (
        summary or {}).get("ledger")
    reports = eval_reports(run_dir)
    head = [f"# Run report: `{run_dir}`", ""]
    if summary is not None:
        head += [f"{summary['steps']} learner steps, {summary['samples_trained']} samples trained, "
                 f"{summary['versions_pushed']} weight versions pushed, wall {summary['wall_s'] / 60:.0f} min; "
                 f"skipped, by reason: {summary.get('skipped', {})}.", ""]
    lines = [*head, *_before_after(summary), *_checkpoints(run_dir, reports), *_curves(run_dir),
             *_weights(run_dir, summary, ledger), *_ledger(ledger), *_trained_samples(run_dir, samples),
             *_eval_samples(reports, 2)]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
