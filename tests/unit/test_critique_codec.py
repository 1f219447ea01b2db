"""Critique messages survive the wire: dataclass -> protobuf bytes -> dataclass."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ixt_stream.critique.server import to_sample
from ixt_stream.types import Critique, Label, ModelCard, Sample
from ixt_stream.wire import codec
from ixt_stream.wire.codec import card_from_pb, card_to_pb
from ixt_stream.wire.ixt.v1 import ixt_pb2 as pb


@given(
    critique=st.text(max_size=300), thinking=st.text(max_size=300),
    score=st.floats(0.0, 1.0), label=st.sampled_from(list(Label)),
    sample_id=st.text(min_size=1, max_size=40),
)
def test_critique_round_trip(critique, thinking, score, label, sample_id):
    c = Critique(sample_id=sample_id, critique=critique, score=score, label=label, thinking=thinking,
                 model_id="verifier", latency_ms=1.5)
    wire = pb.CritiqueResponse.FromString(codec.critique_to_pb(c).SerializeToString())
    back = codec.critique_from_pb(wire)
    assert (back.sample_id, back.critique, back.thinking, back.label, back.model_id) == \
           (sample_id, critique, thinking, label, "verifier")
    assert back.score == pytest.approx(score, abs=1e-6)  # float32 on the wire


def test_request_round_trip_keeps_every_field():
    s = Sample(sample_id="p1-0", prompt="Calculate 2 + 3.", response="<answer>5</answer>",
               task="basic_arithmetic", reference_answer="5",
               metadata={"entry": json.dumps({"expression": "2 + 3"}), "k": "v"})
    req = pb.CritiqueRequest.FromString(codec.critique_request(s).SerializeToString())
    back = to_sample(req, max_field_bytes=1 << 16)
    assert back == Sample(sample_id="p1-0", prompt=s.prompt, response=s.response, task=s.task,
                          reference_answer="5", metadata=s.metadata)


def test_error_response_does_not_decode_as_a_critique():
    resp = pb.CritiqueResponse(sample_id="x", error=pb.Error(code="INVALID_ARGUMENT", message="empty"))
    with pytest.raises(ValueError, match="INVALID_ARGUMENT"):
        codec.critique_from_pb(resp)


def test_model_card_round_trip():
    card = ModelCard(name="reasoning-gym verifier", backend="verifier", model_id="", tasks=["chain_sum"],
                     max_response_bytes=4096)
    back = card_from_pb(pb.ModelCard.FromString(card_to_pb(card).SerializeToString()))
    assert back == card
