"""Stage 3: (Sample, Critique) -> ConditionedSample, the IXT training format."""

from ixt_stream.condition.format import (
    Conditioner,
    FeedbackCounter,
    InferenceFeedback,
    Rejected,
    feedback_text,
)

__all__ = ["Conditioner", "FeedbackCounter", "InferenceFeedback", "Rejected", "feedback_text"]
