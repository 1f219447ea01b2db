"""`ixt eval [overrides]`: held-out accuracy under each feedback condition, with paired CIs.

An IXT model should answer best when told its answer will be good (the positive prefix it is given
at inference), worse under the negative prefix; the gap shows how much it learned to use feedback.
Conditions: "positive" / "negative" are the critiques the model most often trained with label
good / bad at the best / worst score (from `ixt_condition.json` beside its weights, so the
prefix is token-identical to one it trained on); "unseen" is a positive paraphrase no critic
writes (`eval.unseen_critique`; left out in a mode that shows no critique, where it would be the
positive prefix again); "none" has no prefix. The base-model control evaluates the base
model under a trained model's prefixes (`eval.condition_from`). Held-out problems are distinct
and disjoint by problem from training (`tasks.eval_prompts`); responses from vLLM; accuracy is
exact (1 or 0 per problem).

`evaluate()` is the reusable part; `offline.paired` turns its reports into paired bootstrap
confidence intervals over problems (the same problems under two models or two conditions). Conditions that
produce identical prompts are generated once. `ixt eval` writes its JSON report and `report.md`
(`ixt_stream.report`) beside it.

Sampling at any temperature is seeded once, by the engine (`run.seed`). A prompt with no room to
answer within `condition.max_seq_len` is not generated, scores 0 and is counted (the table's
"skipped: too long" row).

Left out: several samples per prompt (pass@k), and judging with an LLM critic: accuracy here is
the verifiable answer only.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from ixt_stream import logs
from ixt_stream.config import ConfigError, IxtConfig
from ixt_stream.offline.paired import gap

log = logging.getLogger("ixt.eval")


def evaluate(engine, conditioner, prompts, conditions, max_new_tokens: int, temperature: float,
             top_p: float = 1.0) -> dict:
    """Generate one response per prompt under each condition and score it.

    Args:
        engine: anything with `fits(token_ids)` and `generate(token_id_prompts, n, max_new_tokens,
            temperature, top_p)` returning completions with `.text`, `.token_ids` and `.finish_reason`
            (`sample.engine.Engine`).
        conditioner: the `Conditioner` the model was trained with (its mode and inference feedback
            decide the prefix).
        prompts: `tasks.Prompt`s with answers.
        conditions: any of "positive", "negative", "unseen", "none".

    Returns:
        {"metrics": flat dict: eval/<condition>/accuracy (exact score of the final answer: tagged,
        else the last number), eval/<condition>/strict_accuracy (tagged answers only),
        eval/<condition>/answered (fraction with an <answer> tag), eval/<condition>/response_tokens
        (mean), eval/<condition>/truncated (fraction cut at max_new_tokens), eval/<condition>/too_long
        (prompts with no room to answer within the engine's context: not generated, scored 0),
        eval/num_prompts, and eval/gap (positive minus negative accuracy) when both are evaluated;
        "samples": one dict per (prompt, condition): prompt_id, condition, prompt, answer, response,
        score, strict}.
    """
    from ixt_stream import tasks
    from ixt_stream.sample.engine import Completion

    metrics: dict[str, float] = {"eval/num_prompts": float(len(prompts))}
    samples: list[dict] = []
    generated: dict[tuple, list] = {}
    for condition in conditions:
        ids = [conditioner.inference_ids(p.prompt, condition) for p in prompts]
        key = tuple(map(tuple, ids))
        if key not in generated:
            log.info("generating %d responses under %s", len(ids), condition)
            fit = [i for i, prompt_ids in enumerate(ids) if engine.fits(prompt_ids)]
            outs = engine.generate([ids[i] for i in fit], n=1, max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p) if fit else []
            completions = [Completion("", [])] * len(prompts)  # a prompt that does not fit gets no answer
            for i, out in zip(fit, outs, strict=True):
                completions[i] = out[0]
            generated[key] = (completions, len(prompts) - len(fit))
        completions, too_long = generated[key]
        if too_long:
            log.warning("%s: %d of %d prompts too long for the context: not generated, scored 0", condition,
                        too_long, len(prompts))
        scores = [tasks.score(p.task, c.text, p.answer, p.metadata_json, question=p.prompt)
                  for p, c in zip(prompts, completions, strict=True)]
        strict = [tasks.score(p.task, c.text, p.answer, p.metadata_json, question=p.prompt, strict=True)
                  for p, c in zip(prompts, completions, strict=True)]
        n = max(len(prompts), 1)
        metrics[f"eval/{condition}/accuracy"] = sum(scores) / n
        metrics[f"eval/{condition}/strict_accuracy"] = sum(strict) / n
        metrics[f"eval/{condition}/answered"] = sum(tasks.extract_answer(c.text) is not None
                                                    for c in completions) / n
        metrics[f"eval/{condition}/response_tokens"] = sum(len(c.token_ids) for c in completions) / n
        metrics[f"eval/{condition}/truncated"] = sum(c.finish_reason == "length" for c in completions) / n
        metrics[f"eval/{condition}/too_long"] = float(too_long)
        samples += [{"prompt_id": p.prompt_id, "condition": condition, "prompt": p.prompt, "answer": p.answer,
                     "response": c.text, "score": s, "strict": t}
                    for p, c, s, t in zip(prompts, completions, scores, strict, strict=True)]
    if "positive" in conditions and "negative" in conditions:
        metrics["eval/gap"] = metrics["eval/positive/accuracy"] - metrics["eval/negative/accuracy"]
    return {"metrics": metrics, "samples": samples}


def table(metrics: dict[str, float], conditions: list[str]) -> str:
    """Conditions side by side: accuracy, answered, mean response tokens."""
    rows = [("accuracy", "accuracy", "{:.3f}"), ("strict accuracy", "strict_accuracy", "{:.3f}"),
            ("answered", "answered", "{:.3f}"), ("truncated", "truncated", "{:.3f}"),
            ("response tokens", "response_tokens", "{:.1f}"), ("skipped: too long", "too_long", "{:.0f}")]
    lines = [f"{'':<16}" + "".join(f"{c:>10}" for c in conditions)]
    for title, key, fmt in rows:
        cells = (fmt.format(metrics[f"eval/{c}/{key}"]) for c in conditions)
        lines.append(f"{title:<16}" + "".join(f"{cell:>10}" for cell in cells))
    return "\n".join(lines)


def conditioner_for(model_dir: str, cfg: IxtConfig):
    """The Conditioner a model is evaluated with: its own record (or `eval.condition_from`'s)
    gives the mode and the trained feedback; `eval.unseen_critique` adds the unseen probe."""
    import dataclasses

    from ixt_stream import models
    from ixt_stream.condition import modes, record
    from ixt_stream.condition.format import Conditioner, InferenceFeedback

    source = cfg.eval.condition_from or model_dir
    found = record.read(source, cfg.condition)
    cond, inference = found if found else (cfg.condition, None)
    if found and cond.mode != cfg.condition.mode:
        log.info("%s was trained with condition.mode=%s: evaluating in that mode", source, cond.mode)
    needs = [c for c in cfg.eval.conditions if c in ("positive", "negative")]
    writes_feedback = modes.get(cond.mode).text is not None
    if writes_feedback and needs and (inference is None or not inference.negative and "negative" in needs):
        raise ConfigError(
            f"eval.conditions: {needs} need the feedback the model was trained on, and {source} has no "
            f"record of it (ixt_condition.json); set eval.condition_from=<a model trained with feedback> "
            f"or eval.conditions=[none,unseen]")
    inference = dataclasses.replace(inference or InferenceFeedback(positive=""), unseen=cfg.eval.unseen_critique)
    return Conditioner.from_config(models.load_tokenizer(model_dir), cond, inference=inference), cond


def run(cfg: IxtConfig) -> dict:
    from ixt_stream import models, tasks
    from ixt_stream.condition import modes
    from ixt_stream.offline.completion_cache import CachedEngine, vllm_version, weights_digest
    from ixt_stream.sample.engine import Engine

    model_dir = cfg.eval.checkpoint or models.resolve(cfg.model)
    conditioner, cond = conditioner_for(model_dir, cfg)
    conditions = list(cfg.eval.conditions)
    if "unseen" in conditions and not modes.get(cond.mode).shows_critique:
        conditions.remove("unseen")  # the paraphrase is a critique: this mode's prefix would be the positive one
        if not conditions:
            raise ConfigError(f"eval.conditions=[unseen]: condition.mode={cond.mode} writes no critique, so the "
                              f"unseen paraphrase is the positive prefix; ask for positive, negative or none")
        log.info("condition.mode=%s shows no critique: the unseen probe would repeat positive; left out", cond.mode)
    prompts = tasks.eval_prompts(cfg.task)
    g = cfg.generator

    def make_engine():
        return Engine(model_dir, dtype=g.dtype, max_model_len=cond.max_seq_len, kv_cache_gib=g.kv_cache_gib,
                      threads=cfg.eval.threads or g.threads, seed=cfg.run.seed,
                      gpu_memory_utilization=g.gpu_memory_utilization, tensor_parallel_size=g.tensor_parallel_size,
                      progress="eval")

    engine = make_engine() if not cfg.eval.cache else CachedEngine(
        make_engine, cfg.eval.cache_dir, max_model_len=cond.max_seq_len,
        identity=[weights_digest(model_dir), str(g.dtype), cond.max_seq_len, vllm_version()])
    s = cfg.eval.sampling
    result = evaluate(engine, conditioner, prompts, conditions, s.max_new_tokens, s.temperature, s.top_p)
    inference = conditioner.inference
    return {"model": model_dir, "condition_mode": cond.mode, "conditions": conditions,
            "tasks": list(cfg.task.names), "feedback": inference.conditions() if inference else {},
            "gap_ci": gap(result, cfg.eval.bootstrap), **result}


def main(cfg: IxtConfig, overrides: list[str]) -> int:
    logs.setup(cfg.run.log_level, "eval")
    report = run(cfg)  # a ConfigError (e.g. a bad eval.condition_from) is one line, exit 2 (hydra_app)
    out = Path(cfg.eval.output or Path(cfg.run.run_dir) / "eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{report['model']}: mode {report['condition_mode']}, "
          f"{int(report['metrics']['eval/num_prompts'])} held-out problems")
    print(table(report["metrics"], report["conditions"]))
    if report["gap_ci"]:
        g = report["gap_ci"]
        print(f"positive - negative accuracy: {g['diff']:+.3f} [95% CI {g['lo']:+.3f}, {g['hi']:+.3f}]")
    print(f"-> {out}")
    from ixt_stream.report import render

    print(f"report -> {render(out.parent)}")
    return 0


if __name__ == "__main__":  # the same as `ixt eval`
    from ixt_stream.cli import main as cli_main

    sys.exit(cli_main(["eval", *sys.argv[1:]]))
