"""Bad input rows: reported as `file:line: reason`, then skipped and counted, or fatal.

Real corpora hold truncated lines, stray non-UTF-8 bytes, `null` where a string belongs and
arrays where objects belong; samples may also be too long for `condition.max_seq_len`. None of
them may hang a command or shrink its output silently: each is logged with its place, counted by
reason, and the command ends with a summary of the counts. With `run.bad_input=fail` the first
one stops the command instead (`BadInput`, whose message is `file:line: reason`).
Left out: repairing rows (a truncated line is not guessed at), other formats than JSONL.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

POLICIES = ("skip", "fail")


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


def jsonl_objects(path: str | Path, skips: Skips, limit: int = 0,
                  torn_tail_ok: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) for every good line of `path` among its first `limit` (0 = all).

    Bytes are decoded line by line, so one bad byte costs one line, not the file. With
    `torn_tail_ok`, a last line without a newline that does not parse (a writer killed mid-line)
    is dropped with a warning and not counted as bad.
    """
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
            yield number, row
