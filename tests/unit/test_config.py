"""Every shipped config composes against the typed schema; bad values fail naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from ixt_stream.config import CONFIG_DIR, ConfigError, IxtConfig, load

GROUPS = sorted(p for p in Path(CONFIG_DIR).iterdir() if p.is_dir())


@pytest.mark.parametrize("option", [f"{g.name}={f.stem}" for g in GROUPS for f in sorted(g.glob("*.yaml"))])
def test_every_shipped_option_composes(option):
    assert isinstance(load([option]), IxtConfig)


@pytest.mark.parametrize("override, field", [
    ("reward.backend=telepathy", "reward.backend"),
    ("condition.mode=vibes", "condition.mode"),
    ("learner.zero_stage=7", "learner.zero_stage"),
    ("learner.tokens_per_batch=16", "learner.tokens_per_batch"),
    ("learner.zero_stage=two", "learner.zero_stage"),
    ("learner.no_such_knob=1", "learner.no_such_knob"),
    ("condition.feedback_dropout=1.5", "condition.feedback_dropout"),
    ("learner.row_tokens=100", "learner.row_tokens"),
    ("stream.weight_transport=pigeon", "stream.weight_transport"),
    ("stream.collective_port=5605", "stream.collective_port"),  # old names fail too (now sub-sections)
    ("generator.temperature=0.5", "generator.temperature"),
    ("generator.sampling.top_k=5", "generator.sampling.top_k"),
    ("stream.filesystem.keep_versions=0", "stream.filesystem.keep_versions"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load([override])
