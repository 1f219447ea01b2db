"""Per-run results -> invariants, results.json, the plots and report.md: what the experiment found, plainly.

The report is generated from the numbers alone: Scope first, then the invariants and the negative
controls (the shuffled-critique arm, the conditioning gaps), then the headline (the multiplier per
size at each pre-registered target, with its interval and minimum detectable effect), a verdict per
size worded "consistent / not consistent with the paper's mechanism" (never "reproduces"), every
place where IXT does not win, the critic's author -> label confusion and leak check, the mixture
comparison (filtered vs IXT), error kinds, and the plots. Missing runs are listed, not guessed.
Left out: prose not derived from the results, and corrections for multiple comparisons.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ixt_stream.config import IxtConfig
from ixt_stream.experiment import analysis, data, plots
from ixt_stream.experiment.world import MIXTURES

CONDITIONED = [a for a, m in data.ARMS.items() if m != "none"]


def _load(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []


def _bits(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), dtype=np.uint8) - ord("0")


def _arm_arrays(runs: list[dict]) -> dict:
    """[S, K+1, P] greedy / sampled / expert loss, and the seed-mean FLOPs and data tokens per point."""
    return {"seeds": [r["seed"] for r in runs],
            "greedy": np.stack([[_bits(p["greedy"]) for p in r["points"]] for r in runs]).astype(float),
            "sampled": np.stack([[_bits(p["sampled"]) for p in r["points"]] for r in runs]).astype(float),
            "loss": np.stack([[p["expert_loss"] for p in r["points"]] for r in runs]).astype(float),
            "flops": np.mean([[p["flops"] for p in r["points"]] for r in runs], 0),
            "data_tokens": np.mean([[p["loss_tokens"] for p in r["points"]] for r in runs], 0)}


def summarize_group(results: list[dict], arms: list[str], targets: list[float], resamples: int) -> dict:
    """One (size, mixture): curves, multipliers at each target, final gaps and conditioning gaps."""
    by_arm = {a: sorted((r for r in results if r["arm"] == a), key=lambda r: r["seed"]) for a in arms}
    by_arm = {a: rs for a, rs in by_arm.items() if rs}
    out: dict = {"arms": {}, "multipliers": {}, "final_gap": {}, "conditioning": {}}
    if not by_arm:
        return out
    arrays = {a: _arm_arrays(rs) for a, rs in by_arm.items()}
    for arm, x in arrays.items():
        final = by_arm[arm][-1]
        kinds = Counter()
        for r in by_arm[arm]:
            kinds.update(r["points"][-1]["kinds"])
        out["arms"][arm] = {
            "seeds": x["seeds"], "flops": x["flops"].tolist(), "data_tokens": x["data_tokens"].tolist(),
            "greedy": analysis.mean_curve(x["greedy"]).tolist(), "sampled": analysis.mean_curve(x["sampled"]).tolist(),
            "expert_loss": analysis.mean_curve(x["loss"]).tolist(), "kinds": dict(kinds),
            "conditions": {c: float(np.mean([_bits(r["final_conditions"][c]["greedy"]).mean() for r in by_arm[arm]]))
                           for c in final["final_conditions"]},
            "inference": final["inference"], "lr": final["lr"], "shape": final["shape"],
            "budget_flops": final["budget_flops"],
            "docs": float(np.mean([r["points"][-1]["docs"] for r in by_arm[arm]])),
            "epochs": float(np.mean([r["points"][-1]["epoch"] + 1 for r in by_arm[arm]])),
            "seconds": float(np.mean([r["seconds"] for r in by_arm[arm]])),
            "tokens_per_s": float(np.mean([r["tokens_per_s"] for r in by_arm[arm]]))}
        if arm in CONDITIONED and {"positive", "negative", "none"} <= set(final["final_conditions"]):
            cond = {c: np.stack([_bits(r["final_conditions"][c]["greedy"]) for r in by_arm[arm]]).astype(float)
                    for c in final["final_conditions"]}
            out["conditioning"][arm] = {
                "positive_minus_negative": analysis.bootstrap_difference(cond["positive"], cond["negative"], resamples),
                "positive_minus_none": analysis.bootstrap_difference(cond["positive"], cond["none"], resamples)}
    base = arrays.get("baseline")
    if base is None:
        return out
    loss_target = float(analysis.monotone(analysis.mean_curve(base["loss"]), increasing=False)[-1])
    out["loss_target"] = loss_target
    for arm, x in arrays.items():
        if arm == "baseline":
            continue
        common = sorted(set(x["seeds"]) & set(base["seeds"]))
        b = {k: base[k][[base["seeds"].index(s) for s in common]] for k in ("greedy", "loss")}
        a = {k: x[k][[x["seeds"].index(s) for s in common]] for k in ("greedy", "loss")}
        m = {f"accuracy {t:g}": analysis.bootstrap_multiplier(base["flops"], b["greedy"], x["flops"], a["greedy"], t,
                                                               True, resamples) for t in targets}
        m["expert loss"] = analysis.bootstrap_multiplier(base["flops"], b["loss"], x["flops"], a["loss"], loss_target,
                                                         False, resamples)
        out["multipliers"][arm] = m
        out["final_gap"][arm] = analysis.bootstrap_difference(a["greedy"][:, -1], b["greedy"][:, -1], resamples)
    return out


# -- invariants ------------------------------------------------------------------------------------


def invariants(cfg: IxtConfig, runs: list[dict], corpora: dict[str, dict], out: Path) -> dict:
    """name -> {"ok", "detail"}: what must hold for any result to mean anything."""
    res = {}
    digits = sum(c.get("critiques_with_digits", 0) for c in corpora.values())
    res["no digits in critiques"] = {"ok": bool(corpora) and digits == 0,
                                     "detail": f"{digits} of {sum(c['documents'] for c in corpora.values())}"}
    bad = [r["tag"] for r in runs if not r["invariants"]["inference_prefix_trained"]]
    res["inference prefix is a training prefix"] = {"ok": not bad, "detail": f"{len(runs) - len(bad)}/{len(runs)} runs"}
    loss_on_prefix = sum(r["invariants"]["prefix_loss_tokens"] for r in runs)
    res["zero loss on prefix tokens"] = {"ok": loss_on_prefix == 0,
                                         "detail": f"{loss_on_prefix} prefix tokens with loss"}
    off = 0
    for r in runs:
        shape = analysis.Shape(**r["shape"])
        off += sum(abs(p["flops"] - analysis.flops(shape, p["tokens"], p["pairs"], p["loss_tokens"]))
                   > 1e-9 * max(p["flops"], 1.0) for p in r["points"])
    res["FLOPs = counted tokens x formula"] = {"ok": off == 0, "detail": f"{off} checkpoints off"}
    order_bad, checked = [], 0
    for mixture in {r["mixture"] for r in runs}:
        path = out / "data" / f"{mixture}.jsonl"
        if not path.exists():
            continue
        rows = data.read_corpus(path)
        good = [c.label.word == "good" for _, c in rows]
        for r in (r for r in runs if r["mixture"] == mixture):
            perm = data.permutation(len(rows), r["seed"], 0)
            want = [i for i in perm if good[i]] if r["arm"] == "filtered" else perm
            n = min(len(r["invariants"]["first_docs"]), len(want))
            checked += 1
            if r["invariants"]["first_docs"][:n] != want[:n]:
                order_bad.append(r["tag"])
    res["identical data order across arms"] = {"ok": not order_bad and checked > 0,
                                               "detail": f"{checked - len(order_bad)}/{checked} runs"}
    budgets = {}
    for r in runs:
        if r["fraction"] == 1.0:
            budgets.setdefault((r["size"], r["mixture"]), set()).add(round(r["budget_flops"]))
    res["equal FLOPs across arms"] = {"ok": all(len(v) == 1 for v in budgets.values()),
                                      "detail": f"{len(budgets)} (size, mixture) groups"}
    return res


# -- collect ---------------------------------------------------------------------------------------


def collect(cfg: IxtConfig, lrs: dict, gate: dict) -> dict:
    e = cfg.experiment
    out = Path(e.out_dir)
    corpora = {m: json.loads(Path(out / "data" / f"{m}.jsonl.done").read_text())
               for m in MIXTURES if (out / "data" / f"{m}.jsonl.done").exists()}
    runs, summary = [], {"experiment": asdict(e), "lr": lrs, "gate": gate, "corpora": corpora, "sizes": {},
                         "mixtures": {}, "missing": []}
    pilot = e.pilot_size or list(e.sizes)[len(e.sizes) // 2]
    for size in e.sizes:
        for mixture in [e.mixture] + ([m for m in e.compare_mixtures if m != e.mixture] if size == pilot else []):
            arms = e.arms if mixture == e.mixture else e.compare_arms
            group = [r for r in _load(out / "runs" / size / mixture) if r["arm"] in arms and r["seed"] in e.seeds]
            runs += group
            have = {(r["arm"], r["seed"]) for r in group}
            summary["missing"] += [f"{size}/{mixture}/{a}/s{s}" for s in e.seeds for a in arms if (a, s) not in have]
            s = summarize_group(group, list(arms), list(e.targets), e.bootstrap)
            if mixture == e.mixture:
                summary["sizes"][size] = s
            if size == pilot:
                summary["mixtures"][mixture] = s
    sweeps = [r for size in e.sizes for r in _load(out / "sweep" / size / e.mixture)]
    summary["invariants"] = invariants(cfg, runs + sweeps, corpora, out)
    summary["pilot_size"] = pilot
    return summary


# -- words -----------------------------------------------------------------------------------------


def _stat(s: dict | None, fmt: str = "{:+.3f}", null: float = 0.0) -> str:
    if not s or s.get("point") is None:
        return "n/a"
    text = fmt.format(s["point"])
    if s.get("ci"):
        text += f" [{fmt.format(s['ci'][0])}, {fmt.format(s['ci'][1])}]"
        if analysis.is_null(s, null) and s.get("mde") is not None:
            text += f" (no detectable effect; MDE {fmt.format(s['mde']).lstrip('+')})"
    return text


def _mult(m: dict | None) -> str:
    if not m:
        return "n/a"
    if m["kind"] == "undefined":
        return "undefined (neither reaches it)"
    if m["kind"] != "exact":
        return f"{'<=' if m['kind'] == 'upper' else '>='} {m['value']:.2f}x"
    text = f"{m['value']:.2f}x"
    if m.get("ci"):
        text += f" [{m['ci'][0]:.2f}, {m['ci'][1]:.2f}]"
        if analysis.is_null(m, 1.0) and m.get("mde"):
            text += f" (no detectable effect; MDE {m['mde']:.2f}x)"
    return text


def verdict(s: dict) -> tuple[str, str]:
    """("consistent" | "not consistent", why) for one size, from the numbers only."""
    m = s.get("multipliers", {}).get("ixt", {}).get("expert loss")
    gap = s.get("conditioning", {}).get("ixt", {}).get("positive_minus_negative")
    control = s.get("conditioning", {}).get("shuffled", {}).get("positive_minus_negative")
    if not m or m["kind"] != "exact" or not m.get("ci"):
        return "not consistent", "no defined IXT multiplier at the expert-loss target"
    if m["ci"][0] <= 1.0:
        return "not consistent", f"the IXT multiplier's interval reaches 1 or below ({_mult(m)})"
    if not gap or not gap.get("ci") or gap["ci"][0] <= 0:
        return "not consistent", ("IXT gains compute, but its positive prefix is not detectably better than its "
                                  "negative one")
    if control and control.get("ci") and control["ci"][0] > 0:
        return "not consistent", ("the shuffled control shows a conditioning gap too: the gain is not from the "
                                  "critique's content")
    return "consistent", (f"IXT multiplier {_mult(m)}, positive - negative {_stat(gap)}, "
                          f"shuffled control {_stat(control)}")


def not_wins(summary: dict) -> list[str]:
    out = []
    for name, s in summary["sizes"].items():
        for target, m in s.get("multipliers", {}).get("ixt", {}).items():
            if m["kind"] == "upper" or (m["kind"] == "exact" and m["value"] < 1):
                out.append(f"{name}: at {target}, IXT needs more compute than the baseline ({_mult(m)}).")
        gap = s.get("final_gap", {}).get("ixt")
        if gap and gap["point"] is not None and gap["point"] < 0:
            out.append(f"{name}: IXT ends below the baseline at equal FLOPs ({_stat(gap)}).")
        arms = s.get("arms", {})
        for rival in ("filtered", "label", "shuffled", "ixt_dropout"):
            if rival in arms and "ixt" in arms and arms[rival]["greedy"][-1] >= arms["ixt"]["greedy"][-1]:
                out.append(f"{name}: {rival} ends at or above IXT ({arms[rival]['greedy'][-1]:.3f} vs "
                           f"{arms['ixt']['greedy'][-1]:.3f} greedy accuracy).")
    for mixture, s in summary["mixtures"].items():
        arms = s.get("arms", {})
        if "filtered" in arms and "ixt" in arms and arms["filtered"]["greedy"][-1] >= arms["ixt"]["greedy"][-1]:
            out.append(f"mixture {mixture}: filtering ends at or above IXT ({arms['filtered']['greedy'][-1]:.3f} vs "
                       f"{arms['ixt']['greedy'][-1]:.3f}).")
    return out


def markdown(cfg: IxtConfig, summary: dict) -> str:
    e, w = cfg.experiment, cfg.experiment.world
    sizes = summary["sizes"]
    shapes = {n: next(iter(s["arms"].values()))["shape"] for n, s in sizes.items() if s.get("arms")}
    md = ["# Feedback-conditioned pre-training in miniature", ""]
    if e.smoke:
        md += ["**Smoke test, not evidence**: a pipeline check at toy scale; no number here says anything "
               "about IXT.", ""]
    md += ["## Scope", "",
           f"- A synthetic corpus: {w.digits}-digit addition and subtraction, worked column by column, "
           f"{w.problems_per_doc} problems per document, {w.num_docs} documents per mixture, by four authors "
           "(always right; drops carries; slips one answer digit; no working). Held out by problem: "
           f"{w.eval_problems} problems never in any training document.",
           "- Models: Llama-style, trained from scratch, "
           + ", ".join(f"{n} {s['non_embedding'] / 1e6:.2f}M" for n, s in shapes.items())
           + f" non-embedding parameters; a {next(iter(shapes.values()))['vocab'] if shapes else '?'}-word vocabulary.",
           f"- Budget: the FLOPs of {e.tokens:,} baseline tokens per run, equal for every arm of a size; "
           f"{len(e.seeds)} seeds; one data order per seed shared by every arm.",
           "- The critic is a programmatic process verifier (served through the reward service over gRPC); its "
           "compute is not counted.",
           "- This tests the mechanism in miniature; it cannot reproduce the paper's numbers (arXiv 2605.20285).", "",
           "FLOPs = tokens x (6 N_non-embedding) + 12 L d x causal attention pairs + 6 d V x loss tokens (the LM "
           "head on loss tokens only; prefix tokens included). Multiplier = compute the baseline needs to reach a "
           "target / compute the arm needs, on isotonic-smoothed curves interpolated in log-compute; `<=`/`>=` are "
           "bounds where a curve never gets there. Intervals: hierarchical paired bootstrap over seeds x problems "
           f"({e.bootstrap} resamples); MDE = minimum detectable effect (80% power) beside every null.", ""]
    g = summary["gate"]
    md += [f"Pilot gate ({g['size']}, first seed): best final greedy accuracy "
           f"{max(g['best'].values(), default=0):.3f} vs {g['threshold']} needed: "
           f"**{'passed' if g['passed'] else 'FAILED, the headline below is not interpretable'}**. "
           "Learning rates (picked on the baseline only): "
           + ", ".join(f"{k} {v['lr']:g}" for k, v in summary["lr"].items()) + ".", "",
           "## Invariants", ""]
    md += [f"- {'ok' if v['ok'] else '**BROKEN**'}: {k} ({v['detail']})" for k, v in summary["invariants"].items()]
    md += ["", "## Negative controls (before any headline)", "",
           "The shuffled arm carries the same critique tokens on the wrong documents: any gain it shows is not "
           "from the critique's content.", "",
           "| size | shuffled multiplier (expert loss) | shuffled pos - neg | IXT pos - neg | IXT pos - none "
           "| label pos - neg |",
           "|---|---|---|---|---|---|"]
    for n, s in sizes.items():
        c = s.get("conditioning", {})
        md.append(f"| {n} | {_mult(s.get('multipliers', {}).get('shuffled', {}).get('expert loss'))} | "
                  f"{_stat(c.get('shuffled', {}).get('positive_minus_negative'))} | "
                  f"{_stat(c.get('ixt', {}).get('positive_minus_negative'))} | "
                  f"{_stat(c.get('ixt', {}).get('positive_minus_none'))} | "
                  f"{_stat(c.get('label', {}).get('positive_minus_negative'))} |")
    targets = [f"accuracy {t:g}" for t in e.targets] + ["expert loss"]
    md += ["", "## Headline: compute multiplier over the baseline", "",
           f"Mixture {e.mixture}. Targets pre-registered: greedy accuracy {', '.join(f'{t:g}' for t in e.targets)}; "
           "expert loss at the baseline's final value.", ""]
    for arm in [a for a in e.arms if a != "baseline"]:
        md += [f"**{arm}**", "", "| size | " + " | ".join(targets) + " | final accuracy - baseline |",
               "|---|" + "---|" * (len(targets) + 1)]
        for n, s in sizes.items():
            m = s.get("multipliers", {}).get(arm, {})
            md.append(f"| {n} | " + " | ".join(_mult(m.get(t)) for t in targets) + f" | "
                      f"{_stat(s.get('final_gap', {}).get(arm))} |")
        md.append("")
    md += ["## Verdict", ""]
    for n, s in sizes.items():
        v, why = verdict(s)
        md.append(f"- {n}: **{v} with the paper's mechanism**: {why}.")
    md += ["", "### Where IXT does not win", ""]
    md += [f"- {x}" for x in not_wins(summary)] or ["- Nowhere in these runs."]
    md += ["", "## Final accuracy per arm (greedy; sampled)", "", "| size | " + " | ".join(e.arms) + " |",
           "|---|" + "---|" * len(e.arms)]
    for n, s in sizes.items():
        md.append(f"| {n} | " + " | ".join(
            f"{a['greedy'][-1]:.3f}; {a['sampled'][-1]:.3f}" if (a := s['arms'].get(arm)) else "n/a"
            for arm in e.arms) + " |")
    md += ["", "Conditions at the final checkpoint (greedy accuracy): positive = a good critique seen in training, "
           "unseen = a good paraphrase never seen, negative = a bad critique seen, none = no prefix.", "",
           "| size | arm | positive | unseen | negative | none |", "|---|---|---|---|---|---|"]
    for n, s in sizes.items():
        for arm, a in s["arms"].items():
            if arm in CONDITIONED:
                c = a["conditions"]
                cells = [f"{c[k]:.3f}" if k in c else "n/a" for k in ("positive", "unseen", "negative", "none")]
                md.append(f"| {n} | {arm} | " + " | ".join(cells) + " |")
    md += ["", "## Filtered vs IXT across mixtures", "", f"Size {summary['pilot_size']}; final greedy accuracy and "
           "the multiplier over the baseline at the expert-loss target.", "",
           "| mixture | author shares | " + " | ".join(e.compare_arms) + " | filtered mult. | IXT mult. |",
           "|---|---|" + "---|" * (len(e.compare_arms) + 2)]
    for mixture, s in summary["mixtures"].items():
        arms = s.get("arms", {})
        md.append(f"| {mixture} | {MIXTURES[mixture]} | " + " | ".join(
            f"{arms[a]['greedy'][-1]:.3f}" if a in arms else "n/a" for a in e.compare_arms) + " | "
            + " | ".join(_mult(s.get("multipliers", {}).get(a, {}).get("expert loss")) for a in ("filtered", "ixt"))
            + " |")
    md += ["", "## The critic", ""]
    for mixture, c in summary["corpora"].items():
        md.append(f"- {mixture}: {c['documents']} documents; author -> label {c['author_to_label']}; "
                  f"critiques with a digit: {c['critiques_with_digits']} (leak check); "
                  f"{c['distinct_critiques']} distinct critiques.")
    md += ["", "## Error kinds of wrong greedy answers (final checkpoint, all seeds)", ""]
    for n, s in sizes.items():
        for arm, a in s["arms"].items():
            md.append(f"- {n} / {arm}: {dict(sorted(a['kinds'].items()))}")
    md += ["", "## Runs", "", "| size | arm | lr | documents read | epochs | s per run | tokens/s |",
           "|---|---|---|---|---|---|---|"]
    for n, s in sizes.items():
        for arm, a in s["arms"].items():
            md.append(f"| {n} | {arm} | {a['lr']:g} | {a['docs']:.0f} | {a['epochs']:.1f} | {a['seconds']:.0f} | "
                      f"{a['tokens_per_s']:.0f} |")
    if summary["missing"]:
        md += ["", f"Missing runs: {', '.join(summary['missing'])}."]
    md += ["", "## Plots", ""] + [f"- `{p}`: {what}" for p, what in plots.PLOTS.items()]
    md += ["", "Data: results.json.", ""]
    return "\n".join(md)


def write_report(cfg: IxtConfig, folder: Path, lrs: dict, gate: dict) -> tuple[dict, list[str]]:
    """results.json, the plots and report.md into `folder`; returns (summary, headline lines)."""
    summary = analysis.finite(collect(cfg, lrs, gate))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    plots.all_plots(summary, folder)
    (folder / "report.md").write_text(markdown(cfg, summary))
    lines = [f"{n}: {verdict(s)[0]} with the paper's mechanism ({verdict(s)[1]})" for n, s in summary["sizes"].items()]
    return summary, lines + [f"not a win: {x}" for x in not_wins(summary)]
