"""Corpora in, annotated rows out: JSON lines, Parquet, and local Hugging Face `datasets` folders.

The one home of the annotated format (`ixt annotate` writes it, `ixt train` and the experiment
read it): a row holds every `Sample` field plus the critique's (`critique`, `score`, `label` as
its word, `thinking`, `model_id`, `latency_ms`).

Reading (`annotate.input`, `train.data`) picks the format from the path: a folder is a `datasets`
folder written by `save_to_disk` (loaded from that path only, never from the hub; a DatasetDict
folder must hold one split, or name the split's own folder), `*.parquet` is Parquet, anything
else is JSON lines. `ColumnsConfig` maps the source's column names onto the sample: `prompt`,
`response`, `text` (a raw document: no prompt), `answer` (the reference answer) and `id`; the
annotated format's own names (`sample_id`, `reference_answer`) are read too. In JSON lines a
blank line and a half-written last line (a writer killed mid-line) are skipped.

Writing: annotate appends JSON lines, flushed one by one, so a killed run resumes (`prepare_output`
returns the ids already written). A Parquet output is written once at the end: the lines go to
`<output>.partial.jsonl` first, and `finish_output` merges them with the rows the Parquet file
already holds (a rerun adds to it). Parquet stores `metadata` as a JSON string.
Left out: writing `datasets` folders (`Dataset.from_parquet` reads the Parquet output), remote
paths, and streaming Parquet output.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path

from ixt_stream.config import ColumnsConfig, ConfigError
from ixt_stream.types import Critique, Label, Sample

log = logging.getLogger("ixt.corpus")

_SAMPLE_FIELDS = {f.name for f in fields(Sample)}
_PARTIAL = ".partial.jsonl"


# -- reading ----------------------------------------------------------------------------------


def read_rows(path: str | Path, limit: int = 0) -> Iterator[tuple[str, dict]]:
    """(where, row) for each row of a JSONL file, a Parquet file or a `datasets` folder (the first
    `limit`; 0 = all); `where` names the row in errors (`file:line` or `file row n`)."""
    path = Path(path)
    if path.is_dir():
        rows = _datasets_rows(path)
    elif path.suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        rows = _jsonl_rows(path)
    for n, item in enumerate(rows):
        if limit and n >= limit:
            return
        yield item


def count_rows(path: str | Path) -> int:
    """Rows in a corpus, cheaply (Parquet metadata, the folder's length, newlines)."""
    path = Path(path)
    if path.is_dir():
        return len(_dataset(path))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict]]:
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                log.warning("%s:%d: skipping a half-written last line", path, number)
                continue
            raise ValueError(f"{path}:{number}: not a JSON line") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield f"{path} row {n}", row
            n += 1


def _dataset(path: Path):
    """The `datasets.Dataset` saved in `path` (one split of a DatasetDict)."""
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    if isinstance(ds, DatasetDict):
        if len(ds) != 1:
            raise ConfigError(f"{path}: a DatasetDict with splits {', '.join(ds)}; give the folder of one "
                              f"(e.g. {path / next(iter(ds))})")
        ds = next(iter(ds.values()))
    return ds


def _datasets_rows(path: Path) -> Iterator[tuple[str, dict]]:
    for n, row in enumerate(_dataset(path)):
        yield f"{path} row {n}", row


def _metadata(value) -> dict[str, str]:
    """`metadata` as str -> str: a dict (JSONL), a JSON string (our Parquet) or a struct (theirs)."""
    if isinstance(value, str):
        value = json.loads(value) if value else {}
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in (value or {}).items() if v is not None}


def to_sample(row: dict, columns: ColumnsConfig, where: str, fallback_id: str, key: str = "columns") -> Sample:
    """One source row as a Sample; a row with no response raises ConfigError naming it and `key`
    (the config field of `columns`)."""
    def get(*names: str):
        return next((row[n] for n in names if row.get(n) is not None), None)

    text = get(columns.text)
    response = text if text is not None else get(columns.response)
    if response is None:
        raise ConfigError(f"{key}: {where} has no {columns.response!r} or {columns.text!r} value "
                          f"(its columns: {', '.join(row)}); name them with {key}.response / {key}.text")
    answer = get(columns.answer, "reference_answer")
    sample_id = get(columns.id, "sample_id")
    return Sample(**{
        **{k: v for k, v in row.items() if k in _SAMPLE_FIELDS and v is not None},
        "sample_id": str(fallback_id if sample_id is None else sample_id),
        "prompt": "" if text is not None else str(get(columns.prompt) or ""),
        "response": str(response),
        "reference_answer": "" if answer is None else str(answer),
        "metadata": _metadata(row.get("metadata")),
    })


def read_samples(path: str | Path, columns: ColumnsConfig | None = None, limit: int = 0,
                 key: str = "columns") -> Iterator[Sample]:
    """Prompt/response pairs or raw documents from a corpus; rows without an id get `<stem>-<n>`."""
    columns, stem = columns or ColumnsConfig(), Path(path).stem
    for n, (where, row) in enumerate(read_rows(path, limit)):
        yield to_sample(row, columns, where, f"{stem}-{n}", key)


def _label(value: int | str) -> Label:
    """A label written as its number (3), its word ("good") or its enum name ("GOOD")."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return Label(int(value))
    return Label[value.upper()]


def read_annotated(path: str | Path, columns: ColumnsConfig | None = None,
                   key: str = "columns") -> list[tuple[Sample, Critique | None]]:
    """(Sample, Critique) pairs from annotated rows; a row without a `label` gives a sample with no
    critique (trained without feedback). A broken row raises ValueError naming it."""
    columns, stem, out = columns or ColumnsConfig(), Path(path).stem, []
    for n, (where, row) in enumerate(read_rows(path)):
        try:
            sample = to_sample(row, columns, where, f"{stem}-{n}", key)
            critique = None
            if row.get("label") is not None:
                critique = Critique(
                    sample_id=sample.sample_id, critique=row.get("critique") or "",
                    score=float(row.get("score") or 0.0), label=_label(row["label"]),
                    thinking=row.get("thinking") or "", model_id=row.get("model_id") or "",
                    latency_ms=float(row.get("latency_ms") or 0.0),
                )
        except ConfigError:
            raise
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{where}: {e!r}") from e
        out.append((sample, critique))
    return out


# -- writing ----------------------------------------------------------------------------------


def annotated_row(sample: Sample, critique: Critique) -> dict:
    """One annotated row: every Sample field, then the critique's (label as its word)."""
    return {**asdict(sample), "critique": critique.critique, "score": critique.score,
            "label": critique.label.word, "thinking": critique.thinking, "model_id": critique.model_id,
            "latency_ms": critique.latency_ms}


def journal(output: str | Path) -> Path:
    """Where annotate appends its lines: the output itself, or next to a Parquet output."""
    output = Path(output)
    return output.with_name(output.name + _PARTIAL) if output.suffix == ".parquet" else output


def prepare_output(output: str | Path) -> set[str]:
    """The sample ids `output` (and its journal) already hold; a half-written last journal line is
    cut off first."""
    output, path = Path(output), journal(output)
    done = set()
    if output.suffix == ".parquet" and output.exists():
        done = {row["sample_id"] for _, row in _parquet_rows(output)}
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return done
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s ends in a half-written line (%d bytes): cutting it off", path, len(data) - keep)
        with path.open("r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    for line in data.splitlines():
        try:
            done.add(json.loads(line)["sample_id"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def finish_output(output: str | Path) -> None:
    """A Parquet output: its rows so far + the journal's, written atomically; the journal goes."""
    output = Path(output)
    if output.suffix != ".parquet" or not journal(output).exists():
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [row for _, row in _parquet_rows(output)] if output.exists() else []
    rows += [{**row, "metadata": json.dumps(row.get("metadata") or {})} for _, row in _jsonl_rows(journal(output))]
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, output)
    journal(output).unlink()
