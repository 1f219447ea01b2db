"""The experiment's data: corpora critiqued by the real reward service, and the order every arm reads them.

`python -m ixt_stream.experiment.data spec.json` writes one annotated corpus per mixture
(`world.corpus`): `ixt serve reward reward.backend=process` is started on a free loopback port and
every document is streamed through it with `RewardClient` (the same gRPC path as the online loop);
the rows go to `<mixture>.jsonl` in the annotated format (`corpus.annotated_row`), then a `.done`
marker with the author -> label counts and the digits found in critiques (the leak check: 0).

`stream` is the one place an arm's order is decided. Epoch e visits every document in one
permutation of (seed, e), the same for every arm; the filtered arm skips what the critic did not
label good (and so repeats the good ones more often), ixt_dropout drops a document's prefix with
probability `dropout` (a draw per (seed, epoch, document)), shuffled carries document j's critique
on document i (a fixed permutation: the same tokens, no information). `ARMS` maps an arm to the
conditioning mode whose text (`condition.format.feedback_text`) forms its prefix.
Left out: critiquing at train time (the corpora are annotated once) and re-annotating on change.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ixt_stream import corpus, logs, net
from ixt_stream.condition.format import FeedbackCounter, feedback_text
from ixt_stream.critique.process import UNSEEN_CORRECT
from ixt_stream.types import Critique, Label, Sample

ARMS = {"baseline": "none", "filtered": "none", "ixt": "critique", "label": "label", "shuffled": "critique",
        "ixt_dropout": "critique"}
"""arm -> the conditioning mode of its prefix."""
SHUFFLE_SEED = 12_345
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
              "TOKENIZERS_PARALLELISM": "false"}


def worker_env() -> dict[str, str]:
    return {**os.environ, **WORKER_ENV}


# -- critiquing the corpora (a worker process) ------------------------------------------------------


def start_reward_service(log_path: Path) -> tuple[subprocess.Popen, str]:
    """`ixt serve reward reward.backend=process` on a free loopback port; returns (process, "host:port")."""
    port = net.free_port()
    cmd = [sys.executable, "-m", "ixt_stream.cli", "serve", "reward", "reward.backend=process",
           "reward.host=127.0.0.1", f"reward.port={port}", f"run.run_dir={log_path.parent / 'reward'}"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, stdout=log_path.open("a"), stderr=subprocess.STDOUT, env=worker_env())
    return proc, f"127.0.0.1:{port}"


def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def critique_all(address: str, docs: list[Sample], output: Path) -> dict:
    """Every document through the reward service at `address` into `output`; the summary for `.done`."""
    from ixt_stream.critique.client import RewardClient

    rows, confusion = [], Counter()
    async with RewardClient(address, max_in_flight=64) as client:
        await client.wait_ready(120)
        async for result in client.stream(docs):
            if result.error is not None:
                raise RuntimeError(f"{result.sample.sample_id}: {result.error}")
            rows.append(corpus.annotated_row(result.sample, result.critique))
            confusion[f"{result.sample.metadata['author']}->{result.critique.label.word}"] += 1
    rows.sort(key=lambda r: r["sample_id"])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"documents": len(rows), "author_to_label": dict(sorted(confusion.items())),
            "critiques_with_digits": sum(bool(re.search(r"\d", r["critique"])) for r in rows),
            "distinct_critiques": len({r["critique"] for r in rows})}


def main(argv: list[str]) -> int:
    """`python -m ixt_stream.experiment.data <spec.json>`: start the critic, critique each mixture, stop it."""
    import uvloop

    from ixt_stream.config import load
    from ixt_stream.experiment import world

    spec = json.loads(Path(argv[0]).read_text())
    logs.setup("INFO", "data")
    w = load(spec["overrides"]).experiment.world
    s = world.split(w.digits, w.eval_problems, w.seed)
    proc, address = start_reward_service(Path(spec["log_dir"]) / "reward.log")
    try:
        for mixture, output in spec["corpora"].items():
            t0 = time.perf_counter()
            docs = world.corpus(s, mixture, w.num_docs, w.problems_per_doc, w.seed)
            summary = uvloop.run(critique_all(address, docs, Path(output)))
            Path(f"{output}.done").write_text(json.dumps(summary))
            print(f"corpus {mixture}: {summary} ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        stop(proc)
    return 0


# -- reading a corpus in an arm's order ------------------------------------------------------------


def read_corpus(path: Path) -> list[tuple[Sample, Critique]]:
    return sorted(corpus.read_annotated(path), key=lambda row: row[0].sample_id)


def prefixes(rows: list[tuple[Sample, Critique]], arm: str) -> list[str]:
    """Each document's feedback text under `arm` (before dropout); "" for arms without feedback."""
    mode = ARMS[arm]
    critiques = [c for _, c in rows]
    if arm == "shuffled":
        random.Random(SHUFFLE_SEED).shuffle(critiques)
    return [feedback_text(c.label, c.critique, mode) for c in critiques]


def inference_prefixes(rows: list[tuple[Sample, Critique]], arm: str) -> dict[str, str]:
    """condition -> prefix at evaluation: "positive" is the training feedback the online loop would
    pick (`FeedbackCounter`: the most frequent good critique at the best score), exactly as trained;
    "negative" the bad one at the worst score; "unseen" a good paraphrase the critic never writes;
    "none" no prefix. An arm without feedback has "positive" = no prefix only."""
    mode = ARMS[arm]
    if mode == "none":
        return {"positive": ""}
    counter = FeedbackCounter()
    for _, c in rows:
        counter.add(c)
    out = {"positive": feedback_text(Label.GOOD, counter.most_frequent(Label.GOOD), mode),
           "negative": feedback_text(Label.BAD, counter.most_frequent(Label.BAD), mode), "none": ""}
    if mode == "critique":
        out["unseen"] = feedback_text(Label.GOOD, UNSEEN_CORRECT, mode)
    return out


def permutation(n: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def stream(rows: list[tuple[Sample, Critique]], arm: str, seed: int, dropout: float) -> Iterator[tuple[int, int, str]]:
    """(epoch, document index, prefix text) forever, in the arm's order."""
    texts = prefixes(rows, arm)
    keep = [arm != "filtered" or c.label == Label.GOOD for _, c in rows]
    if not any(keep):
        raise ValueError(f"arm {arm}: the critic labelled no document good, nothing to train on")
    epoch = 0
    while True:
        for i in permutation(len(rows), seed, epoch):
            if not keep[i]:
                continue
            text = texts[i]
            if arm == "ixt_dropout" and random.Random(f"{seed}/{epoch}/{i}").random() < dropout:
                text = ""
            yield epoch, i, text
        epoch += 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
