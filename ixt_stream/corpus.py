"""Corpora in, annotated rows out: JSON lines, Parquet, and local Hugging Face `datasets` folders.

The one home of the annotated format (`ixt annotate` writes it, `ixt train` and the experiment
read it): a row holds every `Sample` field plus the critique's (`critique`, `score`, `label` as
its word, `thinking`, `model_id`, `latency_ms`).

Reading (`annotate.input`, `train.data`) picks the format from the path: a folder is a `datasets`
folder written by `save_to_disk` (loaded from that path only, never from the hub; a DatasetDict
folder must hold one split, or name the split's own folder), `*.parquet` is Parquet, anything
else is JSON lines. `ColumnsConfig` maps the source's column names onto the sample: `prompt`,
`response`, `text` (a raw document: no prompt), `answer` (the reference answer) and `id`; the
annotated format's own names (`sample_id`, `reference_answer`) are read too.

Bad rows: real corpora hold truncated lines, stray non-UTF-8 bytes, `null` where a string belongs
and arrays where objects belong. None of them may hang a command or shrink its output silently:
each is reported to a `Skips` as `file:line: reason` (`file row n` in Parquet and `datasets`),
logged, counted by reason, and the command ends with the counts (`run.bad_input=fail`: the first
one stops it, `BadInput`). A JSON line's bytes are decoded line by line, so one bad byte costs one
line; blank lines are skipped, and in an annotated file (a journal) so is a half-written last line.
A column that does not exist in a Parquet or `datasets` source, leaving a row without a response,
is a misnamed column, not a bad row: a ConfigError naming the `columns` setting.

Writing: annotate appends JSON lines, flushed one by one, so a killed run resumes (`prepare_output`
returns the ids already written). A Parquet output is written once at the end: the lines go to
`<output>.partial.jsonl` first, and `finish_output` merges them with the rows the Parquet file
already holds (a rerun adds to it). Parquet stores `metadata` as a JSON string.
Left out: repairing rows (a truncated line is not guessed at), writing `datasets` folders
(`Dataset.from_parquet` reads the Parquet output), remote paths, and streaming Parquet output.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ixt_stream.config import ColumnsConfig, ConfigError
from ixt_stream.types import Critique, Label, Sample

log = logging.getLogger("ixt.corpus")

_SAMPLE_FIELDS = {f.name for f in fields(Sample)}
_PARTIAL = ".partial.jsonl"


# -- bad rows ---------------------------------------------------------------------------------

class BadInput(ValueError):
    """A bad row under `run.bad_input=fail`; the message names it as `file:line: reason`."""


@dataclass
class Skips:
    """What a command skipped, by reason (a short key such as `not_json` or `too_long`)."""

    fail: bool = False
    """Raise BadInput at the first bad row instead of skipping it."""
    reasons: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def bad(self, where: str, reason: str, detail: str = "") -> None:
        """Report one bad row at `where` ("file:line" or a sample id): raise, or log and count it."""
        message = f"{where}: {reason}" + (f" ({detail})" if detail else "")
        if self.fail:
            raise BadInput(message)
        log.warning("%s: skipped", message)
        self.reasons[reason] += 1


# -- reading ----------------------------------------------------------------------------------


def read_rows(path: str | Path, skips: Skips | None = None, limit: int = 0,
              torn_tail_ok: bool = False) -> Iterator[tuple[int, str, dict]]:
    """(n, where, row) for each good row of a JSONL file, a Parquet file or a `datasets` folder
    among its first `limit` (0 = all); n counts rows (in JSON lines: lines) from 0, `where` names
    the row (`file:line` or `file row n`). A JSON line
    that is not an object goes to `skips` (default: raise BadInput); with `torn_tail_ok` a
    half-written last line is dropped with a warning, uncounted."""
    path, skips = Path(path), skips or Skips(fail=True)
    if path.is_dir():
        rows = _datasets_rows(path)
    elif path.suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        yield from _jsonl_rows(path, skips, limit, torn_tail_ok)
        return
    for n, (where, row) in enumerate(rows):
        if limit and n >= limit:
            return
        yield n, where, row


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


def _jsonl_rows(path: Path, skips: Skips, limit: int = 0,
                torn_tail_ok: bool = False) -> Iterator[tuple[int, str, dict]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if limit and number > limit:
                return
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                skips.bad(where, "not_utf8", str(e))
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                if torn_tail_ok and not raw.endswith(b"\n"):
                    log.warning("%s: skipping a half-written last line", where)
                    continue
                reason = "too_deep" if isinstance(e, RecursionError) else "not_json"
                skips.bad(where, reason, str(e) if reason == "not_json" else "nested too deeply")
                continue
            if not isinstance(row, dict):
                skips.bad(where, "not_object", f"a JSON {type(row).__name__}, not an object")
                continue
            yield number - 1, where, row


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
    if not isinstance(value, dict | None):
        raise ValueError(f"'metadata' is a JSON {type(value).__name__}, not an object")
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in (value or {}).items() if v is not None}


def _text(row: dict, name: str, kinds: tuple[type, ...] = (str,)) -> str | None:
    """`row[name]` as a string (None when absent or null); ValueError when it has another type."""
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{name!r} is {json.dumps(value, default=str)[:40]}, not a "
                         f"{' or '.join(k.__name__ for k in kinds)}")
    return str(value)


def to_sample(row: dict, columns: ColumnsConfig, where: str, fallback_id: str, key: str = "columns",
              schema: bool = False) -> Sample:
    """One source row as a Sample. A field of the wrong type, or no response at all, raises
    ValueError (a bad row); in a source with a schema (`schema`: Parquet, `datasets`) a row left
    without a response by a column the schema lacks raises ConfigError naming `key` (the config
    field of `columns`)."""
    def first(*names: str, kinds: tuple[type, ...] = (str,)) -> str | None:
        return next((v for n in names if (v := _text(row, n, kinds)) is not None), None)

    text = _text(row, columns.text)
    response = text if text is not None else _text(row, columns.response)
    if response is None:
        if schema and not {columns.response, columns.text} <= row.keys():
            raise ConfigError(f"{key}: {where} has no {columns.response!r} or {columns.text!r} value "
                              f"(its columns: {', '.join(row)}); name them with {key}.response / {key}.text")
        if columns.response in row:
            raise ValueError(f"{columns.response!r} is null, not a str")
        raise ValueError(f"no {columns.response!r} (prompt/response pair) or {columns.text!r} (document) value")
    if not response.strip():
        raise ValueError(f"{columns.text if text is not None else columns.response!r} is empty")
    ident, number = (str, int), (str, int, float)
    answer = first(columns.answer, "reference_answer", kinds=number)
    sample_id = first(columns.id, "sample_id", kinds=ident)
    return Sample(**{
        **{k: v for k, v in row.items() if k in _SAMPLE_FIELDS and v is not None},
        "sample_id": fallback_id if sample_id is None else sample_id,
        "prompt": "" if text is not None else (_text(row, columns.prompt) or ""),
        "response": response,
        "task": _text(row, "task") or "",
        "reference_answer": answer or "",
        "metadata": _metadata(row.get("metadata")),
    })


def read_samples(path: str | Path, columns: ColumnsConfig | None = None, limit: int = 0,
                 key: str = "columns", skips: Skips | None = None) -> Iterator[Sample]:
    """Prompt/response pairs or raw documents from a corpus; rows without an id get `<stem>-<n>`
    (n counts from 0, by line in JSON lines). A bad row goes to `skips` (default: raise BadInput)."""
    columns, stem, skips = columns or ColumnsConfig(), Path(path).stem, skips or Skips(fail=True)
    schema = _has_schema(path)
    for n, where, row in read_rows(path, skips, limit):
        try:
            sample = to_sample(row, columns, where, f"{stem}-{n}", key, schema)
        except ConfigError:  # a ValueError too, but the setting is wrong, not the row
            raise
        except ValueError as e:
            skips.bad(where, "bad_field", str(e))
            continue
        yield sample


def _has_schema(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() or path.suffix == ".parquet"


def _label(value: int | str) -> Label:
    """A label written as its number (3), its word ("good") or its enum name ("GOOD")."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return Label(int(value))
    return Label[value.upper()]


def read_annotated(path: str | Path, columns: ColumnsConfig | None = None, key: str = "columns",
                   skips: Skips | None = None) -> list[tuple[Sample, Critique | None]]:
    """(Sample, Critique) pairs from annotated rows; a row without a `label` gives a sample with no
    critique (trained without feedback). A broken row goes to `skips` as `file:line: reason`
    (default: raise BadInput, a ValueError); a half-written last line is dropped."""
    columns, stem, skips = columns or ColumnsConfig(), Path(path).stem, skips or Skips(fail=True)
    schema, out = _has_schema(path), []
    for n, where, row in read_rows(path, skips, torn_tail_ok=True):
        try:
            sample = to_sample(row, columns, where, f"{stem}-{n}", key, schema)
            critique = None
            if row.get("label") is not None:
                critique = Critique(
                    sample_id=sample.sample_id, critique=_text(row, "critique") or "",
                    score=float(row.get("score") or 0.0), label=_label(row["label"]),
                    thinking=_text(row, "thinking") or "", model_id=_text(row, "model_id") or "",
                    latency_ms=float(row.get("latency_ms") or 0.0),
                )
        except ConfigError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            skips.bad(where, "bad_field", repr(e))
            continue
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
    written = _jsonl_rows(journal(output), Skips(fail=True))
    rows += [{**row, "metadata": json.dumps(row.get("metadata") or {})} for _, _, row in written]
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, output)
    journal(output).unlink()
