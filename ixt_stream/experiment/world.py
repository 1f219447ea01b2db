"""The experiment's world: problems, authors of different quality, corpora per mixture, and the tokenizer.

Problems are every `a + b` and `a - b` (a >= b) with `digits`-digit operands, shuffled once by
`world.seed`; the first `eval_problems` are held out *by problem* and never appear in any training
document. A training document is `problems_per_doc` problems from the rest, all worked by one author
(`worked.AUTHORS`); a mixture says how often each author writes. Document i has the same problems
in every mixture (only its author differs), so mixtures differ in quality alone.

    benign      the right step is the most likely one (experts write most documents)
    systematic  the common error dominates (most documents drop carries)
    scarce      few good documents: filtering keeps little and must repeat it

The tokenizer is word-level over a closed vocabulary (the format's words, the critic's paraphrases,
the conditioning modes' texts): tens of tokens, not 49k, so the embedding does not dwarf the model.
Left out: authors who mix error kinds within one document, and natural-language documents.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ixt_stream import worked
from ixt_stream.condition.format import feedback_text
from ixt_stream.critique.process import PARAPHRASES, UNSEEN_CORRECT
from ixt_stream.types import Label, Sample

MIXTURES: dict[str, dict[str, float]] = {
    "benign": {"expert": 0.4, "carry_drop": 0.2, "slip": 0.2, "terse": 0.2},
    "systematic": {"expert": 0.2, "carry_drop": 0.5, "slip": 0.15, "terse": 0.15},
    "scarce": {"expert": 0.05, "carry_drop": 0.35, "slip": 0.3, "terse": 0.3},
}
"""mixture -> author -> share of documents (pre-registered; the report prints them)."""
TASK = "worked_arithmetic"


def problems(digits: int, seed: int) -> list[worked.Problem]:
    """Every problem of the world, in one seeded order (the first ones are the held-out set)."""
    lo, hi = 10 ** (digits - 1), 10 ** digits
    out = [worked.Problem(a, op, b) for a in range(lo, hi) for b in range(lo, hi) for op in "+-"
           if op == "+" or a >= b]
    random.Random(seed).shuffle(out)
    return out


@dataclass(frozen=True)
class Split:
    eval: list[worked.Problem]
    train: list[worked.Problem]


def split(digits: int, eval_problems: int, seed: int) -> Split:
    every = problems(digits, seed)
    if eval_problems >= len(every) // 2:
        raise ValueError(f"eval_problems={eval_problems}: the world has only {len(every)} problems")
    return Split(eval=every[:eval_problems], train=every[eval_problems:])


def corpus(s: Split, mixture: str, num_docs: int, problems_per_doc: int, seed: int) -> list[Sample]:
    """`num_docs` documents of `mixture` (samples with no prompt; `metadata["author"]`)."""
    shares = MIXTURES[mixture]
    authors, weights = list(shares), list(shares.values())
    pick, write = random.Random(seed), random.Random(seed + 1)
    docs = []
    for i in range(num_docs):
        chosen = pick.sample(s.train, problems_per_doc)  # the same draws in every mixture...
        u = pick.random()  # ...and one uniform number, mapped to an author by the mixture's shares
        author = authors[next((j for j, c in enumerate(_cumulative(weights)) if u < c), len(authors) - 1)]
        docs.append(Sample(sample_id=f"{mixture}-{i:06d}", prompt="", response=worked.document(chosen, author, write),
                           task=TASK, metadata={"author": author, "mixture": mixture}))
    return docs


def _cumulative(weights: list[float]) -> list[float]:
    total, out, acc = sum(weights), [], 0.0
    for w in weights:
        acc += w / total
        out.append(acc)
    return out


# -- tokenizer -----------------------------------------------------------------------------------

PAD, SEP, EOS, UNK = "<pad>", "<sep>", "<eos>", "<unk>"
_WORD = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]")


class WordTokenizer:
    """Words, single digits and punctuation marks -> ids; <pad>=0, <sep> opens a document, <eos> ends it."""

    def __init__(self, words: list[str]):
        self.vocab = [PAD, SEP, EOS, UNK] + sorted(set(words) - {PAD, SEP, EOS, UNK})
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.sep_id, self.eos_id, self.unk_id = (self.ids[w] for w in (PAD, SEP, EOS, UNK))
        self.stop_id = self.ids["."]

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(w, self.unk_id) for w in _WORD.findall(text)]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.vocab[i] for i in ids if i != self.pad_id)


def tokenizer() -> WordTokenizer:
    """The closed vocabulary: the format, every critic paraphrase (the unseen one too) and the modes' texts."""
    texts = [" ".join(worked.FORMAT_WORDS), UNSEEN_CORRECT, *(p for ps in PARAPHRASES.values() for p in ps)]
    texts += [feedback_text(label, "x", mode) for label in (Label.GOOD, Label.MIXED, Label.BAD)
              for mode in ("critique", "label")]
    return WordTokenizer([w for t in texts for w in _WORD.findall(t) if w != "x"])
