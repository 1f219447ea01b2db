"""Progress bars for the long commands: one tqdm style (count, rate, ETA) on stderr.

A bar shows only when stderr is a terminal, so CI logs and the services' log files stay readable.
`run.progress=false` turns every bar off: the CLI sets TQDM_DISABLE=1, which tqdm itself reads, so
the bars of vLLM and transformers go quiet too, and so do the commands' subprocesses. While one of
these bars is open, log lines are written above it instead of through it.
Left out: the online loop (`ixt run` keeps its status line: its progress is other processes').
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator


def configure(enabled: bool) -> None:
    """Apply `run.progress` to this process and the ones it starts."""
    if not enabled:
        os.environ["TQDM_DISABLE"] = "1"


def enabled() -> bool:
    return sys.stderr.isatty() and not os.environ.get("TQDM_DISABLE")


def _tqdm(iterable=None, **kwargs):
    from tqdm import tqdm

    off = kwargs.pop("disable", False) or not enabled()
    return tqdm(iterable, **{"file": sys.stderr, "dynamic_ncols": True, **kwargs, "disable": off})


@contextlib.contextmanager
def bar(**kwargs) -> Iterator:
    """A tqdm bar for a `with` block (`total`, `desc`, `unit`, ...); `.update(n)` moves it."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    with _tqdm(**kwargs) as b:
        if b.disable:
            yield b
        else:
            with logging_redirect_tqdm():
                yield b


def labelled(label: str) -> Callable | bool:
    """For libraries that take a tqdm factory (vLLM's `use_tqdm`): one drawing their bars in our
    style with `label` in front of their description, or False when bars are off (vLLM reads the
    elapsed time of the bar it gets, which a disabled bar does not keep)."""
    if not enabled():
        return False
    return lambda iterable=None, **kwargs: _tqdm(iterable, **{**kwargs, "desc": f"{label}: {kwargs.get('desc', '')}"})


def write(line: str) -> None:
    """Print a line to stdout above any open bar."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()
