"""Named choices resolved late: a table maps a name to "module:attribute", imported only when used.

Every registry (`roles.ROLES`, `critique/registry.BACKENDS`, `condition/modes.MODES`,
`weights/registry.TRANSPORTS`) and the CLI's command table use it, so a table costs no import until
a choice is made (the config reads the names without torch; `ixt serve reward` never imports the
learner). Left out: entry-point plugins from other installed packages.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def resolve(target: str):
    """The object "package.module:attribute" names (importing the module)."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def choose(table: Mapping[str, T], name: str, what: str) -> T:
    """`table[name]`, or ValueError naming `what` and the known names."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(table)}")
    return table[name]
