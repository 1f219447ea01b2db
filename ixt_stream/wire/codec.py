"""Dataclasses <-> protobuf messages, and ZeroMQ frames <-> typed bodies.

`decode_frame` never raises on garbage: it returns a `Reject` with a reason that receivers count
and log, so a bad frame costs one counter increment and the pipeline keeps running. A
ConditionedSample is checked field by field before anything downstream sees it: non-empty ids,
a 0/1 loss mask as long as the ids with a loss token, a feedback length within the
ids, and, given `FrameLimits`, ids inside the vocabulary and a length within the learner's limit
(reason `invalid` or `out_of_range`; the Reject names the sample so it can be ledgered dropped).
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ixt_stream.types import ConditionedSample, Critique, Label, ModelCard, Sample, WeightAck, WeightVersion
from ixt_stream.wire.ixt.v1 import ixt_pb2 as pb

SCHEMA_VERSION = pb.SCHEMA_VERSION_1

# -- token ids: packed little-endian int32 (8-10x cheaper than varint lists at these sizes) -----


def pack_ids(ids: list[int]) -> bytes:
    return array("i", ids).tobytes()


def unpack_ids(data: bytes) -> list[int]:
    if len(data) % 4:
        raise ValueError(f"packed int32 ids have {len(data)} bytes, not a multiple of 4")
    out = array("i")
    out.frombytes(data)
    return out.tolist()


# -- samples and critiques --------------------------------------------------------------------


def sample_to_pb(s: Sample) -> pb.Sample:
    return pb.Sample(
        sample_id=s.sample_id, prompt_id=s.prompt_id, task=s.task, prompt=s.prompt,
        response=s.response, reference_answer=s.reference_answer, weight_version=s.weight_version,
        generator_id=s.generator_id, created_at=s.created_at,
        num_response_tokens=s.num_response_tokens, metadata=s.metadata,
        response_token_ids=pack_ids(s.response_token_ids), finish_reason=s.finish_reason,
    )


def sample_from_pb(m: pb.Sample) -> Sample:
    return Sample(
        sample_id=m.sample_id, prompt=m.prompt, response=m.response, task=m.task,
        reference_answer=m.reference_answer, prompt_id=m.prompt_id,
        weight_version=m.weight_version, generator_id=m.generator_id, created_at=m.created_at,
        num_response_tokens=m.num_response_tokens, metadata=dict(m.metadata),
        response_token_ids=unpack_ids(m.response_token_ids), finish_reason=m.finish_reason,
    )


def critique_request(s: Sample) -> pb.CritiqueRequest:
    return pb.CritiqueRequest(
        sample_id=s.sample_id, prompt=s.prompt, response=s.response,
        reference_answer=s.reference_answer, task=s.task, metadata=s.metadata, truncated=s.truncated,
    )


def critique_to_pb(c: Critique) -> pb.CritiqueResponse:
    return pb.CritiqueResponse(
        sample_id=c.sample_id, critique=c.critique, thinking=c.thinking, score=c.score,
        label=int(c.label), model_id=c.model_id, latency_ms=c.latency_ms,
    )


def critique_from_pb(m: pb.CritiqueResponse) -> Critique:
    if m.HasField("error"):
        raise ValueError(f"critique of {m.sample_id!r} failed: {m.error.code}: {m.error.message}")
    if not math.isfinite(m.score) or not 0.0 <= m.score <= 1.0:
        raise ValueError(f"critique of {m.sample_id!r} has score {m.score} outside [0, 1]")
    label = Label(m.label) if m.label in Label._value2member_map_ else Label.UNSPECIFIED
    return Critique(
        sample_id=m.sample_id, critique=m.critique, score=m.score, label=label,
        thinking=m.thinking, model_id=m.model_id, latency_ms=m.latency_ms,
    )


def conditioned_to_pb(c: ConditionedSample) -> pb.ConditionedSample:
    msg = pb.ConditionedSample(
        sample=sample_to_pb(c.sample), input_ids=pack_ids(c.input_ids),
        loss_mask=bytes(c.loss_mask), num_feedback_tokens=c.num_feedback_tokens,
    )
    if c.critique is not None:
        msg.critique.CopyFrom(critique_to_pb(c.critique))
    return msg


def conditioned_from_pb(m: pb.ConditionedSample) -> ConditionedSample:
    """ValueError for a sample no learner could train on (see the module docstring)."""
    ids, mask = unpack_ids(m.input_ids), list(m.loss_mask)
    if not ids:
        raise ValueError(f"conditioned sample {m.sample.sample_id!r} has no input_ids")
    if len(mask) != len(ids):
        raise ValueError(f"conditioned sample {m.sample.sample_id!r}: loss_mask has {len(mask)} entries "
                         f"for {len(ids)} input_ids")
    if not set(mask) <= {0, 1} or not any(mask):
        raise ValueError(f"conditioned sample {m.sample.sample_id!r}: loss_mask must be 0/1 with a loss token")
    if m.num_feedback_tokens > len(ids):
        raise ValueError(f"conditioned sample {m.sample.sample_id!r}: {m.num_feedback_tokens} feedback "
                         f"tokens in {len(ids)}")
    return ConditionedSample(
        sample=sample_from_pb(m.sample),
        critique=critique_from_pb(m.critique) if m.HasField("critique") else None,
        input_ids=ids,
        loss_mask=mask,
        num_feedback_tokens=m.num_feedback_tokens,
    )


@dataclass(frozen=True)
class FrameLimits:
    """What the receiving end can take: token ids below `vocab_size`, at most `max_tokens` of them."""

    vocab_size: int
    max_tokens: int


def out_of_range(c: ConditionedSample, limits: FrameLimits) -> str | None:
    """Why `c` exceeds `limits`, or None."""
    if c.num_tokens > limits.max_tokens:
        return f"{c.num_tokens} tokens, more than the {limits.max_tokens} accepted"
    low, high = min(c.input_ids), max(c.input_ids)
    if low < 0 or high >= limits.vocab_size:
        return f"token id {low if low < 0 else high} outside the vocabulary [0, {limits.vocab_size})"
    return None


def weights_to_pb(w: WeightVersion) -> pb.WeightVersion:
    return pb.WeightVersion(
        version=w.version, step=w.step, uri=w.uri, digest=w.digest, num_bytes=w.num_bytes,
        published_at=w.published_at, transport=w.transport, positive_critique=w.positive_critique,
    )


def weights_from_pb(m: pb.WeightVersion) -> WeightVersion:
    return WeightVersion(
        version=m.version, step=m.step, uri=m.uri, digest=m.digest, num_bytes=m.num_bytes,
        published_at=m.published_at, transport=m.transport, positive_critique=m.positive_critique,
    )


def ack_to_pb(a: WeightAck) -> pb.WeightAck:
    return pb.WeightAck(generator_id=a.generator_id, version=a.version, applied_at=a.applied_at,
                        apply_seconds=a.apply_seconds)


def ack_from_pb(m: pb.WeightAck) -> WeightAck:
    return WeightAck(generator_id=m.generator_id, version=m.version, applied_at=m.applied_at,
                     apply_seconds=m.apply_seconds)


def card_to_pb(card: ModelCard) -> pb.ModelCard:
    return pb.ModelCard(name=card.name, backend=card.backend, model_id=card.model_id,
                        feedback_format=card.feedback_format, score_min=card.score_min,
                        score_max=card.score_max, labels=[int(x) for x in card.labels], tasks=card.tasks,
                        max_response_bytes=card.max_response_bytes)


def card_from_pb(m: pb.ModelCard) -> ModelCard:
    return ModelCard(name=m.name, backend=m.backend, model_id=m.model_id, feedback_format=m.feedback_format,
                     score_min=m.score_min, score_max=m.score_max,
                     labels=[Label(x) for x in m.labels if x in Label._value2member_map_],
                     tasks=list(m.tasks), max_response_bytes=m.max_response_bytes)


# -- ZeroMQ frames ----------------------------------------------------------------------------

_TO_PB = {
    Sample: ("sample", sample_to_pb),
    ConditionedSample: ("conditioned", conditioned_to_pb),
    WeightVersion: ("weights", weights_to_pb),
    WeightAck: ("ack", ack_to_pb),
}
_FROM_PB = {
    "sample": sample_from_pb,
    "conditioned": conditioned_from_pb,
    "weights": weights_from_pb,
    "ack": ack_from_pb,
}

Body = Sample | ConditionedSample | WeightVersion | WeightAck


@dataclass
class Reject:
    """A frame that was not accepted, and why (a short counter key + detail)."""

    reason: str
    detail: str = ""
    sample_id: str = ""
    """The sample a well-formed envelope carried, if any (so the ledger can drop it)."""


def encode_frame(body: Body, run_id: str) -> bytes:
    field, to_pb = _TO_PB[type(body)]
    env = pb.Envelope(schema_version=SCHEMA_VERSION, run_id=run_id)
    getattr(env, field).CopyFrom(to_pb(body))
    return env.SerializeToString()


def decode_frame(data: bytes, run_id: str, expect: type | None = None,
                 limits: FrameLimits | None = None) -> Body | Reject:
    """Parse one frame; any problem becomes a Reject (never an exception)."""
    env = pb.Envelope()
    try:
        env.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        return Reject("malformed", str(e)[:200])
    if env.schema_version != SCHEMA_VERSION:
        return Reject("schema_version", f"got {env.schema_version}, speak {SCHEMA_VERSION}")
    if env.run_id != run_id:
        return Reject("unknown_run", f"run_id {env.run_id!r} is not {run_id!r}")
    field = env.WhichOneof("body")
    if field is None:
        return Reject("empty", "envelope has no body")
    sample_id = env.conditioned.sample.sample_id if field == "conditioned" else ""
    try:
        body = _FROM_PB[field](getattr(env, field))
    except ValueError as e:
        return Reject("invalid", str(e)[:200], sample_id)
    if expect is not None and not isinstance(body, expect):
        return Reject("unexpected_type", f"got {field}, expected {expect.__name__}")
    if limits is not None and isinstance(body, ConditionedSample) and (why := out_of_range(body, limits)):
        return Reject("out_of_range", f"conditioned sample {sample_id!r}: {why}", sample_id)
    return body
