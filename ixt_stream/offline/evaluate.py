"""`ixt eval [overrides]`: held-out accuracy under positive, negative and no conditioning.

An IXT model should answer best when told its answer will be good (the positive prefix it is
always given at inference), worse under the negative prefix, and the gap between the two shows
how much it learned to use feedback. Held-out prompts come from `tasks.eval_prompts` (a seed the
training stream never uses); responses from vLLM; scores from reasoning-gym's own checker.

`evaluate()` is the reusable part (the online loop calls it on its own engine). The conditioning
mode is the one the checkpoint was trained under (`ixt_condition.json` next to its weights) when
that file exists: a baseline trained with mode none gets no prefix under any condition, and
conditions that produce identical prompts are generated only once.

Left out: several samples per prompt (pass@k), and judging with an LLM critic: accuracy here is
the verifiable answer only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

from ixt_stream.config import IxtConfig

log = logging.getLogger("ixt.eval")


def evaluate(engine, conditioner, prompts, conditions, max_new_tokens: int, temperature: float,
             seed: int | None = None) -> dict:
    """Generate one response per prompt under each condition and score it.

    Args:
        engine: anything with `generate(token_id_prompts, n, max_new_tokens, temperature, seed)`
            returning completions with `.text` and `.token_ids` (`sample.engine.Engine`).
        conditioner: the `Conditioner` the model was trained with (its mode decides the prefix).
        prompts: `tasks.Prompt`s with answers.
        conditions: any of "positive", "negative", "none".

    Returns:
        {"metrics": flat dict: eval/<condition>/accuracy (mean score of the final answer: tagged,
        else the last number), eval/<condition>/strict_accuracy (tagged answers only), eval/<condition>/answered
        (fraction with an <answer> tag), eval/<condition>/response_tokens (mean), eval/num_prompts,
        and eval/gap (positive minus negative accuracy) when both are evaluated;
        "samples": one dict per (prompt, condition): prompt_id, condition, response, score}.
    """
    from ixt_stream import tasks

    metrics: dict[str, float] = {"eval/num_prompts": float(len(prompts))}
    samples: list[dict] = []
    generated: dict[tuple, list] = {}
    for condition in conditions:
        ids = [conditioner.inference_ids(p.prompt, condition) for p in prompts]
        key = tuple(map(tuple, ids))
        if key not in generated:
            outs = engine.generate(ids, n=1, max_new_tokens=max_new_tokens, temperature=temperature,
                                   seed=seed)
            generated[key] = [o[0] for o in outs]
        completions = generated[key]
        scores = [tasks.score(p.task, c.text, p.answer, p.metadata_json, question=p.prompt)
                  for p, c in zip(prompts, completions, strict=True)]
        strict = [tasks.score(p.task, c.text, p.answer, p.metadata_json, question=p.prompt, strict=True)
                  for p, c in zip(prompts, completions, strict=True)]
        answered = [tasks.extract_answer(c.text) is not None for c in completions]
        n = max(len(prompts), 1)
        metrics[f"eval/{condition}/accuracy"] = sum(scores) / n
        metrics[f"eval/{condition}/strict_accuracy"] = sum(strict) / n
        metrics[f"eval/{condition}/answered"] = sum(answered) / n
        metrics[f"eval/{condition}/response_tokens"] = sum(len(c.token_ids) for c in completions) / n
        samples += [{"prompt_id": p.prompt_id, "condition": condition, "response": c.text, "score": s}
                    for p, c, s in zip(prompts, completions, scores, strict=True)]
    if "positive" in conditions and "negative" in conditions:
        metrics["eval/gap"] = metrics["eval/positive/accuracy"] - metrics["eval/negative/accuracy"]
    return {"metrics": metrics, "samples": samples}


def table(metrics: dict[str, float], conditions: list[str]) -> str:
    """Conditions side by side: accuracy, answered, mean response tokens."""
    rows = [("accuracy", "accuracy", "{:.3f}"), ("strict accuracy", "strict_accuracy", "{:.3f}"),
            ("answered", "answered", "{:.3f}"),
            ("response tokens", "response_tokens", "{:.1f}")]
    lines = [f"{'':<16}" + "".join(f"{c:>10}" for c in conditions)]
    for title, key, fmt in rows:
        cells = (fmt.format(metrics[f"eval/{c}/{key}"]) for c in conditions)
        lines.append(f"{title:<16}" + "".join(f"{cell:>10}" for cell in cells))
    if "eval/gap" in metrics:
        lines.append(f"positive - negative accuracy: {metrics['eval/gap']:+.3f}")
    return "\n".join(lines)


def trained_condition(model_dir: str, cfg: IxtConfig):
    """The ConditionConfig the model was trained under, else the configured one."""
    from ixt_stream.offline.train import CONDITION_FILE

    path = Path(model_dir) / CONDITION_FILE
    if not path.exists():
        return cfg.condition
    trained = dataclasses.replace(cfg.condition, **json.loads(path.read_text()))
    if trained.mode != cfg.condition.mode:
        log.info("%s was trained with condition.mode=%s: evaluating in that mode", model_dir, trained.mode)
    return trained


def run(cfg: IxtConfig) -> dict:
    from ixt_stream import models, tasks
    from ixt_stream.condition import Conditioner
    from ixt_stream.sample.engine import Engine

    model_dir = cfg.eval.checkpoint or models.resolve(cfg.model)
    cond = trained_condition(model_dir, cfg)
    conditioner = Conditioner.from_config(models.load_tokenizer(model_dir), cond)
    prompts = tasks.eval_prompts(cfg.task)
    g = cfg.generator
    engine = Engine(model_dir, dtype=g.dtype, max_model_len=cond.max_seq_len, kv_cache_gib=g.kv_cache_gib,
                    threads=g.threads, seed=cfg.run.seed, gpu_memory_utilization=g.gpu_memory_utilization,
                    tensor_parallel_size=g.tensor_parallel_size, progress="eval")
    result = evaluate(engine, conditioner, prompts, cfg.eval.conditions, cfg.eval.max_new_tokens,
                      cfg.eval.temperature, seed=cfg.run.seed)
    return {"model": model_dir, "condition_mode": cond.mode, "conditions": list(cfg.eval.conditions),
            "tasks": list(cfg.task.names), **result}


def main(cfg: IxtConfig, overrides: list[str]) -> int:
    logging.basicConfig(level=cfg.run.log_level, format="%(asctime)s %(levelname)s eval: %(message)s")
    report = run(cfg)
    out = Path(cfg.eval.output or Path(cfg.run.run_dir) / "eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{report['model']}: mode {report['condition_mode']}, "
          f"{int(report['metrics']['eval/num_prompts'])} held-out prompts")
    print(table(report["metrics"], report["conditions"]))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":  # the same as `ixt eval`
    from ixt_stream.cli import main as cli_main

    sys.exit(cli_main(["eval", *sys.argv[1:]]))
