"""What a model was trained on: `ixt_condition.json` beside its weights.

It holds the conditioning format (mode, lengths) and the inference feedback: the critiques the
model most often trained with label good (at the best score) and bad (at the worst). Evaluation
and any later use condition on exactly those, so the inference prefix is token-identical to a
prefix the learner trained on.
Written by the online learner and by `ixt train` whenever they save a model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ixt_stream.condition.format import InferenceFeedback
from ixt_stream.config import ConditionConfig

CONDITION_FILE = "ixt_condition.json"


def write(folder: str | Path, cfg: ConditionConfig, feedback: InferenceFeedback | None) -> Path:
    path = Path(folder) / CONDITION_FILE
    body = {**dataclasses.asdict(cfg), "inference": dataclasses.asdict(feedback) if feedback else None}
    path.write_text(json.dumps(body, indent=2))
    return path


def read(folder: str | Path, base: ConditionConfig) -> tuple[ConditionConfig, InferenceFeedback | None] | None:
    """The recorded format (over `base` for fields it lacks) and feedback; None without a record."""
    path = Path(folder) / CONDITION_FILE
    if not path.exists():
        return None
    body = json.loads(path.read_text())
    inference = body.pop("inference", None)
    known = {f.name for f in dataclasses.fields(ConditionConfig)}
    cfg = dataclasses.replace(base, **{k: v for k, v in body.items() if k in known})
    return cfg, InferenceFeedback(**inference) if inference else None
