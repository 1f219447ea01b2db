"""`ixt up` / `ixt status` / `ixt down`: the command lines, over the launcher `launcher.kind` names.

local (the default) runs the stack as background processes of this machine (`supervisor`); ray
places the same services on a Ray cluster (`ray_launcher`, imported only then: Ray is optional).
Both keep pid, log and status files in `run.run_dir`; the rows `status` prints are the same.
"""

from __future__ import annotations

import time

from ixt_stream.config import IxtConfig
from ixt_stream.online import supervisor


def _ray():
    """The Ray launcher, imported only when asked for (Ray is an optional extra)."""
    from ixt_stream.online import ray_launcher

    return ray_launcher


def _fmt(status: dict) -> str:
    age = f"{time.time() - status['time']:.0f}s ago " if "time" in status else ""
    items = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in status.items() if k not in ("pid", "time")]
    return age + " ".join(items)


def up_main(cfg: IxtConfig, overrides: list[str]) -> int:
    if cfg.launcher.kind == "ray":
        started = _ray().up(cfg, overrides)
        print(f"{cfg.run.run_dir}: started on Ray {', '.join(started) or 'nothing'}")
        return status_main(cfg, overrides)
    started = supervisor.up(cfg.run.run_dir, supervisor.stack(cfg, overrides))
    print(f"{cfg.run.run_dir}: started {', '.join(f'{n} ({p})' for n, p in started.items()) or 'nothing'}")
    return status_main(cfg, overrides)


def state(row: dict) -> str:
    """alive | finished (exited after its work was done: its last status says `done`) | DEAD."""
    if row["alive"]:
        return "alive"
    return "finished" if row["status"].get("done") is True else "DEAD"


def launched(cfg: IxtConfig) -> list[dict]:
    """`status` rows from the configured launcher (this machine's pid files, or the Ray cluster)."""
    if cfg.launcher.kind == "ray":
        return _ray().status(cfg)
    return supervisor.status(cfg.run.run_dir)


def status_main(cfg: IxtConfig, overrides: list[str]) -> int:
    """Exit 1 when a service died (exited before its work was done); finished ones are fine."""
    run_dir = cfg.run.run_dir
    rows = launched(cfg)
    if not rows:
        print(f"{run_dir}: no services")
    for r in rows:
        print(f"{r['name']:<14} pid {r['pid']:<8} {state(r):<8} {_fmt(r['status'])}")
    return 0 if rows and all(state(r) != "DEAD" for r in rows) else 1


def down_main(cfg: IxtConfig, overrides: list[str]) -> int:
    if cfg.launcher.kind == "ray":
        result = _ray().down(cfg)
    else:
        result = supervisor.down(cfg.run.run_dir, grace_s=cfg.run.stop_grace_s)
    for name, what in result.items():
        print(f"{name:<14} {what}")
    return 1 if "still alive" in result.values() else 0
