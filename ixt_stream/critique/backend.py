"""The seam between the reward service and whatever writes critiques.

A backend is anything with `card()`, `async critique(sample)` and `async aclose()`. It judges one
sample per call; backends that gain from batching (LLM critics) batch concurrent calls themselves
(`batcher.DynamicBatcher`), so the server and the client never see batches. A backend raises
`InvalidRequest` for input it cannot judge (the server turns it into INVALID_ARGUMENT),
`BackendUnavailable` for a transient failure (UNAVAILABLE, retried by clients); any other exception
is a server-side failure (INTERNAL). Constructors take plain parameters; only `registry.build`
picks and builds a backend from config (by name, `registry.BACKENDS`).
"""

from __future__ import annotations

from typing import Protocol

from ixt_stream.types import Critique, Label, ModelCard, Sample


class InvalidRequest(ValueError):
    """The request cannot be judged by this backend; the message says why (sent to the caller)."""


class BackendUnavailable(RuntimeError):
    """The critic behind the backend is down or overloaded for now (the caller may retry)."""


class Backend(Protocol):
    def card(self) -> ModelCard: ...

    async def critique(self, sample: Sample) -> Critique:
        """Feedback on one sample. Raises InvalidRequest for input it cannot judge."""
        ...

    async def aclose(self) -> None:
        """Release engines, connections and threads."""
        ...


class NullBackend:
    """A fixed critique, instantly: measures pure transport and service overhead."""

    CRITIQUE = "The response was not examined (null critic)."

    def card(self) -> ModelCard:
        return ModelCard(name="null critic", backend="null", feedback_format="critique+label")

    async def critique(self, sample: Sample) -> Critique:
        return Critique(sample_id=sample.sample_id, critique=self.CRITIQUE, score=0.5,
                        label=Label.MIXED, model_id="null")

    async def aclose(self) -> None:
        return None
