"""Stage 3: (Sample, Critique) -> ConditionedSample, the IXT training format."""

from ixt_stream.condition.format import Conditioner, feedback_text

__all__ = ["Conditioner", "feedback_text"]
