"""`ixt annotate` and `ixt train` on Parquet files and local `datasets` folders, with renamed columns.

Annotation runs in-process through the real gRPC reward service (a NullBackend critic) with the
command's own config path (`run_async`): source=file, columns, a Parquet output and its resume.
"""

from __future__ import annotations

import asyncio
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from ixt_stream import corpus
from ixt_stream.config import ColumnsConfig, ConfigError, load
from ixt_stream.critique.backend import NullBackend
from ixt_stream.critique.server import RewardServer
from ixt_stream.offline.annotate import run_async
from ixt_stream.types import Label

ROWS = [  # how a user's corpus looks: its own column names, an int answer, a document among pairs
    {"uid": "q1", "question": "What is 2 + 3?", "completion": "<answer>5</answer>", "solution": 5, "body": None},
    {"uid": "q2", "question": "What is 4 - 1?", "completion": "<answer>2</answer>", "solution": 3, "body": None},
    {"uid": "d1", "question": None, "completion": None, "solution": None, "body": "A note about rivers."},
]
COLUMNS = ["annotate.columns.id=uid", "annotate.columns.prompt=question", "annotate.columns.response=completion",
           "annotate.columns.answer=solution", "annotate.columns.text=body"]


def annotate(source, output, *overrides: str):
    async def main():
        server = RewardServer(NullBackend(), port=0)
        port = await server.start()
        try:
            cfg = load(["annotate.source=file", f"annotate.input={source}", f"annotate.output={output}",
                        "annotate.num_samples=0", f"client.address=127.0.0.1:{port}", *COLUMNS, *overrides])
            return await run_async(cfg)
        finally:
            await server.stop()

    return asyncio.run(main())


def check(pairs):
    by_id = {s.sample_id: (s, c) for s, c in pairs}
    assert set(by_id) == {"q1", "q2", "d1"}
    q1, crit = by_id["q1"]
    assert (q1.prompt, q1.response, q1.reference_answer) == ("What is 2 + 3?", "<answer>5</answer>", "5")
    assert crit.label == Label.MIXED and crit.critique == NullBackend.CRITIQUE
    doc = by_id["d1"][0]
    assert doc.is_document and doc.response == "A note about rivers."


@pytest.mark.timeout(120)
def test_annotate_reads_parquet_and_writes_parquet_that_resumes(tmp_path):
    source, output = tmp_path / "corpus.parquet", tmp_path / "out" / "annotated.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), source)
    stats = annotate(source, output)
    assert (stats.written, stats.skipped, stats.failed) == (3, 0, 0)
    assert output.exists() and not corpus.journal(output).exists()
    check(corpus.read_annotated(output))
    assert pq.read_table(output).num_rows == 3

    again = annotate(source, output)  # finished ids come from the Parquet file itself
    assert (again.written, again.skipped) == (0, 3) and pq.read_table(output).num_rows == 3


@pytest.mark.timeout(120)
def test_annotate_reads_a_datasets_folder(tmp_path):
    folder, output = tmp_path / "corpus_ds", tmp_path / "annotated.jsonl"
    DatasetDict({"train": Dataset.from_list(ROWS)}).save_to_disk(str(folder))
    stats = annotate(folder, output)
    assert stats.written == 3
    check(corpus.read_annotated(output))
    assert json.loads(output.read_text().splitlines()[0])["label"] == "mixed"  # the annotated JSONL


def test_train_reads_the_same_rows_from_jsonl_parquet_and_datasets(tmp_path):
    rows = [{"sample_id": "a", "prompt": "p", "response": "r", "label": "good", "score": 1.0, "critique": "ok",
             "metadata": {"entry": "{}"}},
            {"sample_id": "b", "prompt": "p", "response": "r2"}]  # no label: trained without feedback
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "metadata": json.dumps(r.get("metadata", {}))} for r in rows]), parquet)
    folder = tmp_path / "a_ds"
    Dataset.from_list(rows).save_to_disk(str(folder))  # metadata becomes a struct column
    want = corpus.read_annotated(jsonl)
    assert want[0][1].label == Label.GOOD and want[1][1] is None and want[0][0].metadata == {"entry": "{}"}
    assert corpus.read_annotated(parquet) == want == corpus.read_annotated(folder)
    assert corpus.count_rows(jsonl) == corpus.count_rows(parquet) == corpus.count_rows(folder) == 2


@pytest.mark.timeout(120)
def test_bad_inputs_name_what_to_fix(tmp_path):
    folder = tmp_path / "two_splits"
    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS)}).save_to_disk(str(folder))
    with pytest.raises(ConfigError, match=r"splits train, test; give the folder of one \(e.g. .*two_splits/train\)"):
        list(corpus.read_samples(folder))
    assert len(list(corpus.read_samples(folder / "train", ColumnsConfig(response="completion", text="body")))) == 3
    with pytest.raises(ConfigError, match=r"train.columns: .* no 'response' or 'text' value .* uid, question"):
        corpus.read_annotated(folder / "train", key="train.columns")
    with pytest.raises(ConfigError, match=r"annotate.columns: .*train row 2 has no 'completion' or 'text'"):
        annotate(folder / "train", tmp_path / "out.jsonl", "annotate.columns.text=text")  # fails, never hangs
