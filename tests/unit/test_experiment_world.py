"""The experiment's world and data order: held out by problem, the same order for every arm,
the shuffled control carries the same prefixes, and the tokenizer covers every prefix."""

from __future__ import annotations

from collections import Counter

from ixt_stream import worked
from ixt_stream.critique.process import PARAPHRASES
from ixt_stream.experiment import data, world
from ixt_stream.types import Critique, Label, Sample


def test_held_out_problems_never_appear_in_a_training_document():
    split = world.split(2, 300, 0)
    held = {p.key for p in split.eval}
    for mixture in world.MIXTURES:
        for doc in world.corpus(split, mixture, 400, 4, 0):
            assert not {p.key for p, _ in worked.split_document(doc.response)} & held


def test_document_i_has_the_same_problems_in_every_mixture():
    split = world.split(2, 100, 0)
    keys = {m: [[p.key for p, _ in worked.split_document(d.response)] for d in world.corpus(split, m, 50, 3, 0)]
            for m in world.MIXTURES}
    assert keys["benign"] == keys["systematic"] == keys["scarce"]


def test_the_tokenizer_covers_the_format_and_every_prefix_without_unknowns():
    tok = world.tokenizer()
    assert len(tok) < 200
    split = world.split(2, 100, 0)
    for doc in world.corpus(split, "benign", 50, 4, 0):
        assert tok.unk_id not in tok.encode(doc.response)
        assert tok.decode(tok.encode(doc.response)) == doc.response
    rows = _rows(40)
    for arm in data.ARMS:
        for text in [*data.prefixes(rows, arm), *data.inference_prefixes(rows, arm).values()]:
            assert tok.unk_id not in tok.encode(text)


def _rows(n: int) -> list[tuple[Sample, Critique]]:
    """Document i is labelled good, mixed, bad by i % 3, with a real paraphrase of a matching kind."""
    labels = [(Label.GOOD, "correct"), (Label.MIXED, "no_working"), (Label.BAD, "answer")]
    return [(Sample(sample_id=f"d{i:03d}", prompt="", response="Q 1 1 + 1 1 = answer 2 2 ."),
             Critique(sample_id=f"d{i:03d}", critique=PARAPHRASES[labels[i % 3][1]][i % 2], score=0.5,
                      label=labels[i % 3][0])) for i in range(n)]


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_every_arm_reads_one_order_and_filtered_reads_it_without_the_rest():
    rows = _rows(30)
    orders = {arm: [i for _, i, _ in _take(data.stream(rows, arm, seed=4, dropout=0.5), 60)] for arm in data.ARMS}
    base = orders["baseline"]
    assert base[:30] == data.permutation(30, 4, 0) and sorted(base[:30]) == list(range(30))
    for arm in ("ixt", "label", "shuffled", "ixt_dropout"):
        assert orders[arm] == base
    good = [i for i in base if i % 3 == 0]
    assert orders["filtered"][:len(good)] == good
    assert data.permutation(30, 4, 1) != data.permutation(30, 4, 0)  # epochs reshuffle


def test_the_shuffled_control_carries_the_same_prefixes_on_other_documents():
    rows = _rows(60)
    ixt, shuffled = data.prefixes(rows, "ixt"), data.prefixes(rows, "shuffled")
    assert Counter(ixt) == Counter(shuffled) and ixt != shuffled


def test_dropout_drops_about_its_share_and_the_inference_prefix_is_a_training_prefix():
    rows = _rows(300)
    draws = _take(data.stream(rows, "ixt_dropout", seed=0, dropout=0.5), 300)
    dropped = sum(text == "" for _, _, text in draws)
    assert 110 < dropped < 190
    for arm in ("ixt", "label", "shuffled"):
        infer = data.inference_prefixes(rows, arm)
        assert infer["positive"] in data.prefixes(rows, arm) and infer["negative"] in data.prefixes(rows, arm)
        assert infer["none"] == ""
    assert data.inference_prefixes(rows, "baseline") == {"positive": ""}
