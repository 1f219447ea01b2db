"""LLM critics without an engine: prompt, parser, hybrid grounding, dynamic batching, SGLang contract."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ixt_stream.critique.backend import BackendUnavailable
from ixt_stream.critique.batcher import DynamicBatcher
from ixt_stream.critique.completers import SGLANG_MISSING, SGLangCompleter, fit_tokens
from ixt_stream.critique.llm import LLMBackend, build_messages, parse, render_plain
from ixt_stream.critique.verifier import KINDS, VerifierBackend
from ixt_stream.types import Label, Sample

SAMPLE = Sample(sample_id="s1", prompt="Calculate 17 + 25.", response="17 + 25 = 41.\n<answer>41</answer>",
                task="basic_arithmetic", reference_answer="42",
                metadata={"entry": json.dumps({"expression": "17 + 25"})})


class FakeCompleter:
    """Returns a scripted reply and records the chats it was asked."""

    model_id = "fake-critic"

    def __init__(self, reply: str):
        self.reply = reply
        self.chats = []

    async def complete(self, messages):
        self.chats.append(messages)
        return self.reply

    async def aclose(self):
        pass


# -- parsing ----------------------------------------------------------------------------------


def test_parse_well_formed_output():
    p = parse("<think>17+25 is 42, they wrote 41</think>\nCritique: The sum is off by one.\n"
              "Score: 0.1\nLabel: bad")
    assert (p.thinking, p.critique, p.score, p.label, p.complete) == (
        "17+25 is 42, they wrote 41", "The sum is off by one.", 0.1, Label.BAD, True)


@pytest.mark.parametrize("text, score, label", [
    ("Critique: fine.\nScore: 8/10\nLabel: good", 0.8, Label.GOOD),
    ("Critique: fine.\n**Score:** 85\n**Label:** Good", 0.85, Label.GOOD),  # a percentage
    ("Critique: meh.\nScore: 7", 0.7, Label.MIXED),  # out of ten, label from the score
    ("Critique: wrong.\nLabel: bad", 0.0, Label.BAD),  # score from the label
    ("Critique: wrong.\nScore: 0.9\nLabel: bad", 0.0, Label.BAD),  # contradiction: the label wins
    ("Score: -3\nLabel: bad", 0.0, Label.BAD),  # clamped
    ("complete nonsense ###", 0.5, Label.MIXED),  # nothing usable: neutral fallback
])
def test_parse_tolerates_garbled_fields(text, score, label):
    p = parse(text)
    assert p.score == pytest.approx(score) and p.label == label


def test_parse_fallback_is_marked_and_never_empty():
    p = parse("")
    assert not p.complete and p.critique and "parser fallback" in p.thinking


@given(st.text(max_size=400))
def test_parse_never_raises_and_stays_in_range(text):
    p = parse(text, max_critique_chars=100)
    assert 0.0 <= p.score <= 1.0 and p.label in (Label.BAD, Label.MIXED, Label.GOOD)
    assert 0 < len(p.critique) <= 140  # cut to ~max_critique_chars (plus the cut marker)


# -- prompt -----------------------------------------------------------------------------------


def test_messages_carry_task_response_reference_and_format():
    system, user = build_messages(SAMPLE)
    assert system["role"] == "system" and "Never state the correct answer" in system["content"]
    for part in ("Calculate 17 + 25.", "<answer>41</answer>", "Reference answer (private", "Score:", "Label:"):
        assert part in user["content"]
    doc = build_messages(Sample(sample_id="d", prompt="", response="A page of text."))[1]["content"]
    assert "## Document" in doc and "## Task" not in doc
    long = build_messages(Sample(sample_id="l", prompt="q", response="x" * 10_000), max_field_chars=1000)
    assert len(long[1]["content"]) < 2000 and "characters cut" in long[1]["content"]
    assert render_plain(build_messages(SAMPLE)).endswith("\n\n")


def test_fit_tokens_keeps_head_and_tail():
    assert fit_tokens(list(range(10)), 20) == list(range(10))
    assert fit_tokens(list(range(100)), 10) == [0, 1, 2, 3, 4, 95, 96, 97, 98, 99]


# -- backends over a fake completer -----------------------------------------------------------


def test_llm_backend_parses_and_redacts():
    fake = FakeCompleter("<think>42 expected</think>\nCritique: The sum should be 42.\nScore: 0\nLabel: bad")
    c = asyncio.run(LLMBackend(fake, "vllm").critique(SAMPLE))
    assert (c.label, c.score, c.model_id) == (Label.BAD, 0.0, "fake-critic")
    assert "42" not in c.critique and c.thinking == "42 expected"


@pytest.mark.parametrize("reply, why", [
    ("Critique: two or three sentences on what is right and what is wrong\nScore: 1", "copied the prompt back"),
    ("", "reply was empty"),
    ("<think>17 + 25 is 42, so the answer 41 is", "<think> was never closed"),  # cut off mid-thought
    ("<think>it is wrong</think>", "no critique outside its thinking"),
])
def test_llm_backend_fails_a_reply_without_feedback(reply, why):
    """No made-up MIXED 0.5: the item fails (retryable) and is kept out of training."""
    with pytest.raises(BackendUnavailable, match=why):
        asyncio.run(LLMBackend(FakeCompleter(reply), "vllm").critique(SAMPLE))


def test_hybrid_keeps_the_verifier_verdict_and_tells_the_llm():
    fake = FakeCompleter("Critique: Looks great!\nScore: 1\nLabel: good")  # disagrees with the verifier
    backend = LLMBackend(fake, "hybrid", verifier=VerifierBackend(["basic_arithmetic"]))
    c = asyncio.run(backend.critique(SAMPLE))
    assert (c.label, c.score) == (Label.BAD, 0.0)  # the exact verdict wins
    assert c.critique == "Looks great!"
    assert "Label: bad" in fake.chats[0][1]["content"]  # the LLM was told the verdict
    fake.reply = "garbage"  # no usable critique -> the verifier's own
    own = asyncio.run(backend.critique(SAMPLE)).critique
    assert any(own.startswith(p) for p in KINDS["wrong_slip"][1]), own


# -- dynamic batching -------------------------------------------------------------------------


def test_batcher_groups_concurrent_calls_and_keeps_order():
    calls = []

    def double(items):
        calls.append(list(items))
        time.sleep(0.05)
        return [2 * x for x in items]

    async def main():
        b = DynamicBatcher(double, max_batch_size=8, wait_ms=20)
        out = await asyncio.gather(*[b.submit(i) for i in range(20)])
        await b.aclose()
        return out

    assert asyncio.run(main()) == [2 * i for i in range(20)]
    assert max(len(c) for c in calls) == 8 and sum(map(len, calls)) == 20 and len(calls) <= 4


def test_batcher_failure_fails_only_its_batch():
    def boom(items):
        if -1 in items:
            raise RuntimeError("engine error")
        return items

    async def main():
        b = DynamicBatcher(boom, max_batch_size=4, wait_ms=1)
        with pytest.raises(RuntimeError, match="engine error"):
            await b.submit(-1)
        ok = await b.submit(7)
        await b.aclose()
        return ok

    assert asyncio.run(main()) == 7


def test_batcher_refuses_work_after_close():
    async def main():
        b = DynamicBatcher(lambda items: items, max_batch_size=2, wait_ms=1)
        assert await b.submit(1) == 1
        await b.aclose()
        with pytest.raises(RuntimeError, match="shut down"):
            await asyncio.wait_for(b.submit(2), 1)  # fails at once instead of waiting forever

    asyncio.run(main())


# -- SGLang contract (sglang itself is GPU-only) ----------------------------------------------


def test_sglang_without_sglang_raises_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sglang", None)  # import fails even where sglang exists
    with pytest.raises(RuntimeError) as e:
        SGLangCompleter("/nonexistent")
    assert str(e.value) == SGLANG_MISSING and "GPU" in str(e.value) and "backend=vllm" in str(e.value)


def test_sglang_completer_shares_prompt_and_parser(monkeypatch, smollm2_dir):
    seen = {}

    class FakeEngine:
        def __init__(self, **kw):
            seen["init"] = kw

        async def async_generate(self, prompt, sampling_params):
            seen["prompt"], seen["params"] = prompt, sampling_params
            return {"text": "Critique: Wrong sum.\nScore: 0\nLabel: bad"}

        def shutdown(self):
            seen["shutdown"] = True

    monkeypatch.setitem(sys.modules, "sglang", types.SimpleNamespace(Engine=FakeEngine))
    backend = LLMBackend(SGLangCompleter(smollm2_dir, max_new_tokens=64), "sglang")
    c = asyncio.run(backend.critique(SAMPLE))
    asyncio.run(backend.aclose())
    assert (c.label, c.critique) == (Label.BAD, "Wrong sum.")
    assert seen["prompt"].startswith("<|im_start|>system") and "<answer>41</answer>" in seen["prompt"]
    assert seen["params"]["max_new_tokens"] == 64 and seen["init"]["model_path"] == smollm2_dir
    assert seen["shutdown"]
