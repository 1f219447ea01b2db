"""Wire codec: every ZeroMQ body round-trips; bad frames become counted Rejects, never exceptions."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ixt_stream.types import ConditionedSample, Critique, Label, Sample, WeightAck, WeightVersion
from ixt_stream.wire import codec
from ixt_stream.wire.ixt.v1 import ixt_pb2 as pb

SAMPLE = Sample("s", "p", "r", task="t", reference_answer="4", prompt_id="p0", weight_version=3,
                generator_id="g0", created_at=1.5, num_response_tokens=7, metadata={"entry": "{}"},
                response_token_ids=[17, 2, 49151, 0], finish_reason="length")


@pytest.mark.parametrize("body", [
    SAMPLE,
    ConditionedSample(SAMPLE, Critique("s", "ok", 0.5, Label.MIXED, thinking="t", model_id="m"),
                      [1, 2, -3, 2**31 - 1], [0, 0, 1, 1], 2),
    ConditionedSample(SAMPLE, None, [5], [1], 0),
    WeightVersion(4, 8, "/w/v4", "ab" * 32, 1024, 2.0, "filesystem", positive_critique="Correct."),
    WeightAck("g1", 4, 3.0, 0.5),
])
def test_round_trip(body):
    assert codec.decode_frame(codec.encode_frame(body, "run"), "run") == body


def test_sampled_ids_and_finish_reason_cross_every_hop():
    """generator -> orchestrator (Sample) -> learner (ConditionedSample): ids and ending unchanged;
    the critic is told the response was cut."""
    hop = codec.decode_frame(codec.encode_frame(SAMPLE, "run"), "run")
    assert (hop.response_token_ids, hop.finish_reason, hop.truncated) == ([17, 2, 49151, 0], "length", True)
    assert codec.critique_request(hop).truncated
    cs = ConditionedSample(hop, None, [9, 17, 2, 49151, 0], [0, 1, 1, 1, 1], 0)
    again = codec.decode_frame(codec.encode_frame(cs, "run"), "run")
    assert again.sample.response_token_ids == SAMPLE.response_token_ids and again.input_ids == cs.input_ids


@given(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=300))
def test_packed_ids_round_trip(ids):
    assert codec.unpack_ids(codec.pack_ids(ids)) == ids


def test_rejects_name_their_reason():
    frame = codec.encode_frame(SAMPLE, "run")
    assert codec.decode_frame(frame, "other").reason == "unknown_run"
    assert codec.decode_frame(frame, "run", expect=WeightVersion).reason == "unexpected_type"
    assert codec.decode_frame(b"\xff\xff\xff", "run").reason == "malformed"
    assert codec.decode_frame(frame[: len(frame) // 2], "run").reason in ("malformed", "invalid")
    old = pb.Envelope(schema_version=0, run_id="run")
    old.sample.sample_id = "x"
    assert codec.decode_frame(old.SerializeToString(), "run").reason == "schema_version"
    assert codec.decode_frame(pb.Envelope(schema_version=1, run_id="run").SerializeToString(), "run").reason == "empty"
    env = pb.Envelope(schema_version=1, run_id="run")
    env.conditioned.input_ids = b"\x01\x02\x03"  # not a multiple of 4 bytes
    assert codec.decode_frame(env.SerializeToString(), "run").reason == "invalid"
    env = pb.Envelope(schema_version=1, run_id="run")
    env.conditioned.critique.score = math.nan
    assert codec.decode_frame(env.SerializeToString(), "run").reason == "invalid"


@settings(max_examples=300)
@given(st.binary(max_size=512))
def test_garbage_never_raises(data):
    out = codec.decode_frame(data, "run")
    assert isinstance(out, (codec.Reject, Sample, ConditionedSample, WeightVersion, WeightAck))


def test_critique_error_is_not_a_critique():
    m = pb.CritiqueResponse(sample_id="s", error=pb.Error(code="INVALID_ARGUMENT", message="empty response"))
    with pytest.raises(ValueError, match="INVALID_ARGUMENT"):
        codec.critique_from_pb(m)


# -- ConditionedSample frames checked at the boundary (issue 13, item 9) -----------------------

LIMITS = codec.FrameLimits(vocab_size=49152, max_tokens=512)


def _conditioned_frame(ids: list[int], mask: list[int], feedback: int = 0, run: str = "run") -> bytes:
    env = pb.Envelope(schema_version=codec.SCHEMA_VERSION, run_id=run)
    env.conditioned.sample.sample_id = "x1"
    env.conditioned.input_ids = codec.pack_ids(ids)
    env.conditioned.loss_mask = bytes(mask)
    env.conditioned.num_feedback_tokens = feedback
    return env.SerializeToString()


@pytest.mark.parametrize("ids, mask, feedback, reason, detail", [
    ([], [], 0, "invalid", "no input_ids"),
    ([1, 2, 3], [0, 1], 0, "invalid", "2 entries for 3"),
    ([1, 2, 3], [0, 1, 1, 1], 0, "invalid", "4 entries for 3"),
    ([1, 2, 3], [0, 2, 1], 0, "invalid", "0/1"),
    ([1, 2, 3], [0, 0, 0], 0, "invalid", "with a loss token"),
    ([1, 2, 3], [0, 1, 1], 4, "invalid", "4 feedback tokens in 3"),
    ([1, 10**7, 3], [0, 1, 1], 0, "out_of_range", "token id 10000000 outside the vocabulary"),
    ([1, 49152, 3], [0, 1, 1], 0, "out_of_range", "token id 49152 outside"),
    ([-1, 2, 3], [0, 1, 1], 0, "out_of_range", "token id -1 outside"),
    ([7] * 3000, [0] * 100 + [1] * 2900, 0, "out_of_range", "3000 tokens, more than the 512"),
])
def test_a_conditioned_frame_no_step_could_train_on_is_rejected_with_its_sample_id(ids, mask, feedback, reason,
                                                                                   detail):
    got = codec.decode_frame(_conditioned_frame(ids, mask, feedback), "run", ConditionedSample, LIMITS)
    assert isinstance(got, codec.Reject) and got.reason == reason and detail in got.detail
    assert got.sample_id == "x1"


def test_a_conditioned_frame_within_limits_is_accepted():
    got = codec.decode_frame(_conditioned_frame([1, 2, 49151], [0, 1, 1], 1), "run", ConditionedSample, LIMITS)
    assert isinstance(got, ConditionedSample) and got.input_ids == [1, 2, 49151] and got.num_feedback_tokens == 1
