"""What a checkpoint knows: held-out accuracy (greedy and sampled), expert loss, error kinds.

Every held-out problem is asked once per condition as `[prefix] <sep> Q a op b =`: the prefix is the
arm's inference feedback (a positive critique it trained on, exactly as seen), or nothing. All
prompts of a condition have one length (fixed-digit operands), so a batch needs no padding. The
answer is read up to the first "." and checked step by step with the critic's own checker
(`worked.check`), which also gives the error kind of every wrong answer. The teacher-forced loss is
the mean next-token loss on each problem's expert solution after the same prompt.
Left out: pass@k, and decoding past the first "." (a problem's solution ends there).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from ixt_stream import worked
from ixt_stream.experiment.model import loss
from ixt_stream.experiment.world import WordTokenizer


@dataclass
class Measured:
    greedy: str
    """'0'/'1' per problem: the greedy answer is right."""
    sampled: str
    expert_loss: list[float]
    """Per problem: mean loss on the expert solution's tokens."""
    kinds: dict[str, int]
    """First error kind of each wrong greedy answer."""
    examples: list[str]


def prompt_ids(tok: WordTokenizer, prefix: str, problem: worked.Problem) -> list[int]:
    return tok.encode(prefix) + [tok.sep_id] + tok.encode(problem.text())


@torch.no_grad()
def generate(model, prompts: torch.Tensor, max_new: int, stop_id: int, temperature: float,
             generator: torch.Generator | None) -> torch.Tensor:
    """[B, T] prompts -> [B, max_new] continuations (after a stop token: the stop token repeated)."""
    out = model(input_ids=prompts, use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1]
    done = torch.zeros(prompts.shape[0], dtype=torch.bool)
    new = []
    for _ in range(max_new):
        if temperature > 0:
            probs = torch.softmax(logits.float() / temperature, -1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, stop_id), nxt)
        new.append(nxt)
        done |= nxt == stop_id
        if bool(done.all()):
            break
        out = model(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
    return torch.stack(new, 1)


def answers(tok: WordTokenizer, continuations: torch.Tensor) -> list[str]:
    texts = []
    for row in continuations.tolist():
        cut = row.index(tok.stop_id) + 1 if tok.stop_id in row else len(row)
        texts.append(tok.decode(row[:cut]))
    return texts


@torch.no_grad()
def measure(model, tok: WordTokenizer, problems: list[worked.Problem], prefix: str, temperature: float,
            seed: int, batch: int = 500, sampled: bool = True) -> Measured:
    model.eval()
    max_new = max(len(tok.encode(worked.solution(p))) for p in problems) + 4
    greedy, sample_bits, kinds, examples, losses = [], [], Counter(), [], []
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(problems), batch):
        chunk = problems[i:i + batch]
        prompts = torch.tensor([prompt_ids(tok, prefix, p) for p in chunk])
        for text, p in zip(answers(tok, generate(model, prompts, max_new, tok.stop_id, 0.0, None)), chunk,
                           strict=True):
            c = worked.check(p, text)
            greedy.append("1" if c.right else "0")
            if not c.right:
                kinds[c.kind] += 1
            if len(examples) < 3:
                examples.append(f"{p.text()} {text}")
        if sampled:
            cont = generate(model, prompts, max_new, tok.stop_id, temperature, gen)
            sample_bits += ["1" if worked.check(p, t).right else "0" for t, p in zip(answers(tok, cont), chunk,
                                                                                     strict=True)]
        # the expert solution, teacher-forced after the same prompt
        rows = [(prompts[j].tolist(), tok.encode(worked.solution(p))) for j, p in enumerate(chunk)]
        width = max(len(a) + len(b) for a, b in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for j, (a, b) in enumerate(rows):
            ids[j, :len(a) + len(b)] = torch.tensor(a + b)
            mask[j, len(a):len(a) + len(b)] = 1
        losses += [round(float(x), 4) for x in loss(model, ids, mask, reduce=False)]
    return Measured("".join(greedy), "".join(sample_bits), losses, dict(kinds), examples)
