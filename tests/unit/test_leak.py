"""No built-in critic gives the answer away; the leak check finds leaks where they are."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from ixt_stream import tasks
from ixt_stream.condition import leak
from ixt_stream.config import TaskConfig
from ixt_stream.critique.backend import NullBackend
from ixt_stream.critique.llm import LLMBackend
from ixt_stream.critique.verifier import VerifierBackend
from ixt_stream.types import Sample

TASKS = TaskConfig(names=["basic_arithmetic", "chain_sum", "count_bits", "gcd", "word_sorting"],
                   dataset_kwargs={})


class LeakyCompleter:
    """An LLM critic that states the answers outright: what a careless critic model does."""

    model_id = "leaky"

    def __init__(self):
        self.sample: Sample | None = None

    async def complete(self, messages) -> str:
        ref = self.sample.reference_answer
        given = tasks.final_answer(self.sample.response) or "nothing"
        return (f"<think>check</think>\nCritique: The response says {given}, the right answer is {ref}; "
                f"{ref} is what you get.\nScore: 0.5\nLabel: mixed")

    async def aclose(self) -> None:
        return None


def samples() -> list[Sample]:
    """Correct, wrong, untagged, truncated and reasoning-only responses over several tasks."""
    out = []
    for p in itertools.islice(tasks.train_prompts(TASKS), 60):
        a = p.answer
        n = tasks.as_number(a)
        wrong = str(n + 3) if n is not None else a[::-1] + "x"
        for j, (text, finish) in enumerate([
            (f"Working it out step by step.\n<answer>{a}</answer>", "stop"),
            (f"Working it out step by step.\n<answer>{wrong}</answer>", "stop"),
            (f"The result is {a}", "stop"),
            (f"<answer>{a}</answer> and then a long tail that", "length"),
            (f"Let me count {wrong} then", "length"),
        ]):
            out.append(Sample(sample_id=f"{p.prompt_id}-{j}", prompt=p.prompt, response=text, task=p.task,
                              reference_answer=a, metadata={"entry": p.metadata_json}, finish_reason=finish))
    return out


@pytest.mark.timeout(120)
def test_every_built_in_critic_writes_zero_leaks():
    verifier = VerifierBackend(warm_tasks=TASKS.names)
    leaky = LeakyCompleter()
    critics = {"verifier": verifier, "null": NullBackend(), "llm": LLMBackend(leaky, "vllm"),
               "hybrid": LLMBackend(leaky, "hybrid", verifier=verifier)}
    data = samples()
    assert {s.task for s in data} == set(TASKS.names)
    for name, critic in critics.items():
        leaks = 0
        for s in data:
            leaky.sample = s
            c = asyncio.run(critic.critique(s))
            leaks += bool(leak.find(c.critique, s))
        assert leaks == 0, name
    # the check itself is not blind: the raw LLM critiques leak every time
    raw = [f"the right answer is {s.reference_answer}" for s in data]
    assert sum(bool(leak.find(r, s)) for r, s in zip(raw, data, strict=True)) == len(data)


@pytest.mark.parametrize("critique, found", [
    ("The final answer 7 is correct.", ["7"]),
    ("It should be -7 not 7.", ["7"]),
    ("You wrote 1,234 here.", ["1234"]),
    ("The value \u22127 has the wrong sign.", ["7"]),
    ("Seventeen apples and 17 pears.", []),
    ("Check step 2 again; 7.5 is close.", []),
    ("No digits here at all.", []),
])
def test_find(critique, found):
    sample = Sample(sample_id="s", prompt="q", response="<answer>7</answer>", reference_answer="7")
    if "1,234" in critique:
        sample = Sample(sample_id="s", prompt="q", response="<answer>1234</answer>", reference_answer="1234")
    assert leak.find(critique, sample) == found


def test_word_answers_leak_as_words():
    s = Sample(sample_id="s", prompt="q", response="<answer>banana, apple</answer>",
               reference_answer="apple, banana")
    assert leak.find("You listed banana, apple in the wrong order.", s) == ["banana, apple"]
    assert leak.redact("You listed banana, apple here.", s) == "You listed [...] here."
    short = Sample(sample_id="s", prompt="q", response="<answer>A</answer>", reference_answer="B")
    assert leak.find("A careful answer, but the choice is wrong.", short) == ["A"]
    assert leak.find("a careful answer.", short) == []
