"""The durable sample ledger: every sample id's life, shared by all roles of a run.

    generated (weight version) -> critiqued -> trained at step s | dropped (reason)

SQLite in WAL mode in the run directory: several processes write small batches concurrently, and
whatever was committed survives a kill -9 of any of them. Every training event is appended to its
own table (no uniqueness), so a sample trained twice is visible rather than silently absorbed.
The conservation check: generated = trained + dropped + in flight, no id trained twice, and no
id trained without a critique (`critiqued_at` is stamped once and never cleared).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from ixt_stream.types import Sample

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    sample_id TEXT PRIMARY KEY,
    generator_id TEXT,
    weight_version INTEGER,
    state TEXT NOT NULL,
    step INTEGER,
    reason TEXT,
    updated_at REAL,
    critiqued_at REAL
);
CREATE TABLE IF NOT EXISTS trainings (sample_id TEXT NOT NULL, step INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS trainings_id ON trainings (sample_id);
"""
IN_FLIGHT = ("generated", "critiqued")


class Ledger:
    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(samples)")}
        if "critiqued_at" not in columns:  # a ledger written before the column existed
            try:
                self.db.execute("ALTER TABLE samples ADD COLUMN critiqued_at REAL")
            except sqlite3.OperationalError as e:  # another process added it first
                if "duplicate column" not in str(e):
                    raise

    def _tx(self, sql: str, rows: Iterable[tuple]) -> None:
        rows = list(rows)
        if not rows:
            return
        with self.db:  # one transaction per batch
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(sql, rows)

    def generated(self, samples: Iterable[Sample]) -> None:
        now = time.time()
        self._tx("INSERT OR IGNORE INTO samples (sample_id, generator_id, weight_version, state, updated_at) "
                 "VALUES (?, ?, ?, 'generated', ?)",
                 ((s.sample_id, s.generator_id, s.weight_version, now) for s in samples))

    def critiqued(self, sample_ids: Iterable[str]) -> None:
        now = time.time()
        self._tx("UPDATE samples SET state='critiqued', updated_at=?, critiqued_at=? "
                 "WHERE sample_id=? AND state='generated'", ((now, now, i) for i in sample_ids))

    def trained(self, sample_ids: Iterable[str], step: int) -> None:
        ids, now = list(sample_ids), time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT INTO trainings VALUES (?, ?)", ((i, step) for i in ids))
            self.db.executemany("UPDATE samples SET state='trained', step=?, updated_at=? WHERE sample_id=?",
                                ((step, now, i) for i in ids))

    def dropped(self, items: Iterable[tuple[str, str]]) -> None:
        """Mark (sample_id, reason) pairs dropped; a trained sample stays trained."""
        now = time.time()
        self._tx("UPDATE samples SET state='dropped', reason=?, updated_at=? "
                 "WHERE sample_id=? AND state IN ('generated', 'critiqued')",
                 ((reason, now, i) for i, reason in items))

    def trained_ids(self, sample_ids: Iterable[str]) -> set[str]:
        """Which of these ids were already trained (the learner's guard against doubles)."""
        ids = list(sample_ids)
        found: set[str] = set()
        for k in range(0, len(ids), 500):
            chunk = ids[k:k + 500]
            q = f"SELECT DISTINCT sample_id FROM trainings WHERE sample_id IN ({','.join('?' * len(chunk))})"
            found.update(r[0] for r in self.db.execute(q, chunk))
        return found

    def last_trained_step(self) -> int:
        """The highest step any sample was trained at (0 = nothing trained yet)."""
        return self.db.execute("SELECT COALESCE(MAX(step), 0) FROM trainings").fetchone()[0]

    def untrain_after(self, step: int, drop_reason: str = "") -> int:
        """Forget training events after `step` (a learner resumed from an older checkpoint): those
        samples are no longer in the model. They return to 'critiqued', or, with `drop_reason`, are
        marked dropped (the crashed learner consumed them; nothing sends them again). Returns how many."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            ids = [r[0] for r in self.db.execute("SELECT DISTINCT sample_id FROM trainings WHERE step > ?", (step,))]
            self.db.execute("DELETE FROM trainings WHERE step > ?", (step,))
            state, reason = ("dropped", drop_reason) if drop_reason else ("critiqued", None)
            self.db.executemany("UPDATE samples SET state=?, reason=?, step=NULL, updated_at=? WHERE sample_id=?",
                                ((state, reason, time.time(), i) for i in ids))
        return len(ids)

    def states(self, sample_ids: Iterable[str]) -> dict[str, tuple[str, int | None, str | None]]:
        """sample_id -> (state, step trained at, drop reason), for the ids the ledger knows."""
        ids = list(sample_ids)
        q = f"SELECT sample_id, state, step, reason FROM samples WHERE sample_id IN ({','.join('?' * len(ids))})"
        return {r[0]: (r[1], r[2], r[3]) for r in self.db.execute(q, ids)} if ids else {}

    def summary(self) -> dict:
        counts = dict(self.db.execute("SELECT state, COUNT(*) FROM samples GROUP BY state").fetchall())
        reasons = dict(self.db.execute(
            "SELECT reason, COUNT(*) FROM samples WHERE state='dropped' GROUP BY reason").fetchall())
        twice = self.db.execute(
            "SELECT COUNT(*) FROM (SELECT sample_id FROM trainings GROUP BY sample_id HAVING COUNT(*) > 1)"
        ).fetchone()[0]
        uncritiqued = self.db.execute(
            "SELECT COUNT(*) FROM samples WHERE state='trained' AND critiqued_at IS NULL").fetchone()[0]
        generated = sum(counts.values())
        trained, dropped = counts.get("trained", 0), counts.get("dropped", 0)
        in_flight = sum(counts.get(s, 0) for s in IN_FLIGHT)
        versions = dict(self.db.execute(
            "SELECT weight_version, COUNT(*) FROM samples GROUP BY weight_version").fetchall())
        return {
            "generated": generated, "trained": trained, "dropped": dropped, "in_flight": in_flight,
            "dropped_by_reason": reasons, "trained_twice": twice, "trained_without_critique": uncritiqued,
            "samples_by_weight_version": versions,
            "conserved": generated == trained + dropped + in_flight and twice == 0 and uncritiqued == 0,
        }

    def close(self) -> None:
        self.db.close()


def main(argv: list[str]) -> int:
    """`ixt ledger <run_dir>`: print the conservation check of a run."""
    import json

    if not argv:
        print("usage: ixt ledger <run_dir>")
        return 2
    path = Path(argv[0]) / "ledger.sqlite"
    if not path.exists():
        print(f"no ledger at {path}")
        return 2
    s = Ledger(path).summary()
    print(json.dumps(s, indent=2))
    print(f"generated {s['generated']} = trained {s['trained']} + dropped {s['dropped']} + in flight "
          f"{s['in_flight']}; trained twice: {s['trained_twice']}; trained without a critique: "
          f"{s['trained_without_critique']} -> {'OK' if s['conserved'] else 'VIOLATED'}")
    return 0 if s["conserved"] else 1
