"""Weight transports by name: `stream.weight_transport` -> (writer factory, reader factory).

Each transport is one module of `ixt_stream.weights` with `writer(cfg, root, run_id, dtype)` (the
learner's `base.WeightWriter`) and `reader(cfg, root, run_id, generator_id)` (a generator's
`base.WeightReader`); `cfg` is the `stream` section, whose sub-section `stream.<name>` holds a
transport's own settings (a `*TransportConfig` in `config.py`; none for shm), and `root` the run's
weights folder. A new transport is one new module plus one line here (and its sub-section, if it
has settings): the config's `WeightTransport` choices, `publish.publisher` and `apply.applier` all
read this table. Imports only `lazy`, so the config can read it without torch; a transport's module
is imported only when it is set up.
"""

from __future__ import annotations

from ixt_stream import lazy

TRANSPORTS: dict[str, tuple[str, str]] = {
    "filesystem": ("ixt_stream.weights.filesystem:writer", "ixt_stream.weights.filesystem:reader"),
    "collective": ("ixt_stream.weights.collective:writer", "ixt_stream.weights.collective:reader"),
    "shm": ("ixt_stream.weights.shm:writer", "ixt_stream.weights.shm:reader"),
}


def factory(name: str, side: int):
    """The writer (side 0) or reader (side 1) factory of transport `name`."""
    return lazy.resolve(lazy.choose(TRANSPORTS, str(name), "weight transport")[side])
