"""Worked column arithmetic: the one definition of the format, how authors get it wrong, and the checker.

A problem is `a + b` or `a - b` (a >= b) on non-negative integers; its worked solution goes column
by column from the ones, one step per column (the scratchpad small transformers learn, Lee et al.
2023), then the answer. Every digit is its own word, so a word-level tokenizer sees the columns:

    Q 4 7 + 3 8 = 7 + 8 + 0 = 5 carry 1 ; 4 + 3 + 1 = 8 carry 0 ; answer 8 5 .
    Q 5 2 - 1 7 = 2 - 7 - 0 = 5 borrow 1 ; 5 - 1 - 1 = 3 borrow 0 ; answer 3 5 .

Authors (`write`): "expert" is always right; "carry_drop" passes no carry (borrow) on to the next
column, a systematic error whose ones column and single-column arithmetic stay right; "slip" works
every column right and then miscopies one answer digit; "terse" gives the right answer with no working.
`check` re-derives every step and returns the *first* error kind (what the process-verifier critic
names) and whether the final answer is right; it parses untrusted text in linear time.
Left out: multiplication, negative results, and more than one error per problem.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

AUTHORS = ("expert", "carry_drop", "slip", "terse")
KINDS = ("correct", "no_working", "operand", "carry", "column", "answer", "malformed")
"""First-error kinds in the order a checker meets them along a solution: "correct" (no error),
"no_working" (the answer alone), "operand" (a step's digits are not the problem's), "carry" (a carry
or borrow not passed on), "column" (a column's own arithmetic is wrong), "answer" (the answer is not
what the working gives), "malformed" (not in the format: missing steps, no answer, cut off)."""
FORMAT_WORDS = ("Q", "+", "-", "=", "carry", "borrow", ";", "answer", ".") + tuple("0123456789")


@dataclass(frozen=True)
class Problem:
    a: int
    op: str  # "+" | "-"
    b: int

    @property
    def result(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def key(self) -> str:
        return f"{self.a}{self.op}{self.b}"

    def text(self) -> str:
        """The problem as the model reads it (its prompt at evaluation ends here)."""
        return f"Q {_spaced(self.a)} {self.op} {_spaced(self.b)} ="


def _spaced(n: int) -> str:
    return " ".join(str(n))


def _columns(p: Problem) -> list[tuple[int, int]]:
    width = max(len(str(p.a)), len(str(p.b)))
    da, db = str(p.a).zfill(width)[::-1], str(p.b).zfill(width)[::-1]
    return [(int(x), int(y)) for x, y in zip(da, db, strict=True)]


def _step(op: str, x: int, y: int, k: int) -> tuple[int, int]:
    """(digit, carry/borrow out) of one column with carry/borrow in `k`."""
    if op == "+":
        s = x + y + k
        return s % 10, s // 10
    s = x - y - k
    return s % 10, int(s < 0)


def _answer(op: str, digits: list[int], last_out: int) -> int:
    """The number a column-by-column working gives (digits ones first)."""
    value = sum(d * 10 ** i for i, d in enumerate(digits))
    return value + (last_out * 10 ** len(digits) if op == "+" else 0)


def solution(p: Problem, author: str = "expert", rng: random.Random | None = None) -> str:
    """The worked solution `author` writes for `p` (after the problem text)."""
    if author not in AUTHORS:
        raise ValueError(f"unknown author {author!r}: {' | '.join(AUTHORS)}")
    if author == "terse":
        return f"answer {_spaced(p.result)} ."
    word = "carry" if p.op == "+" else "borrow"
    steps, digits, k = [], [], 0
    for x, y in _columns(p):
        k_in = 0 if author == "carry_drop" else k
        d, k = _step(p.op, x, y, k_in)
        steps.append(f"{x} {p.op} {y} {p.op} {k_in} = {d} {word} {k} ;")
        digits.append(d)
    answer = str(_answer(p.op, digits, k))
    if author == "slip":
        rng = rng or random.Random(p.key)
        i = rng.randrange(len(answer))
        wrong = rng.choice([c for c in "0123456789" if c != answer[i] and (i or len(answer) == 1 or c != "0")])
        answer = answer[:i] + wrong + answer[i + 1:]
    return " ".join(steps) + f" answer {' '.join(answer)} ."


def document(problems: list[Problem], author: str, rng: random.Random) -> str:
    """Several worked problems by one author, one after another."""
    return " ".join(f"{p.text()} {solution(p, author, rng)}" for p in problems)


# -- checking ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    kind: str
    """The first error kind (`KINDS`), "correct" when there is none."""
    right: bool
    """The final answer equals the problem's result (whatever the working says)."""


def _int(words: list[str]) -> int | None:
    return int("".join(words)) if words and all(w.isdigit() and len(w) == 1 for w in words) else None


def check(p: Problem, text: str) -> Check:
    """Re-check a solution of `p` step by step (text after the problem's "=", up to and with its ".")."""
    words = text.split()
    if "answer" not in words:
        return Check("malformed", False)
    cut = words.index("answer")
    tail = words[cut + 1:]
    end = tail.index(".") if "." in tail else -1
    given = _int(tail[:end]) if end >= 0 else None
    right = given == p.result
    if end < 0 or given is None:
        return Check("malformed", False)
    work = words[:cut]
    if not work:
        return Check("no_working", right)
    word = "carry" if p.op == "+" else "borrow"
    columns = _columns(p)
    steps = [s.split() for s in " ".join(work).split(";")]
    if steps[-1]:
        return Check("malformed", right)
    steps = steps[:-1]
    if len(steps) != len(columns):
        return Check("malformed", right)
    k, digits, kind = 0, [], ""
    for (x, y), step in zip(columns, steps, strict=True):
        # x op y op k = d word k_out
        if (len(step) != 9 or step[1] != p.op or step[3] != p.op or step[5] != "=" or step[7] != word
                or any(_int([step[i]]) is None for i in (0, 2, 4, 6, 8))):
            return Check("malformed", right)
        sx, sy, sk, sd, so = (int(step[i]) for i in (0, 2, 4, 6, 8))
        if not kind and (sx, sy) != (x, y):
            kind = "operand"
        if not kind and sk != k:
            kind = "carry"
        if not kind and (sd, so) != _step(p.op, sx, sy, sk):
            kind = "column"
        k = so
        digits.append(sd)
    if not kind and given != _answer(p.op, digits, k):
        kind = "answer"
    return Check(kind or "correct", right)


def split_document(text: str) -> list[tuple[Problem | None, str]]:
    """A document's problems and their solution texts; None for a problem that does not parse."""
    out = []
    for chunk in text.split("Q")[1:]:
        words = chunk.split()
        try:
            eq = words.index("=")
            op_at = next(i for i, w in enumerate(words[:eq]) if w in "+-")
            a, b = _int(words[:op_at]), _int(words[op_at + 1:eq])
        except (ValueError, StopIteration):
            out.append((None, chunk))
            continue
        if a is None or b is None or (words[op_at] == "-" and a < b):
            out.append((None, chunk))
        else:
            out.append((Problem(a, words[op_at], b), " ".join(words[eq + 1:])))
    return out
