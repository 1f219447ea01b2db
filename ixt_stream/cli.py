"""`ixt <command> [hydra overrides...]`: one entry point, commands imported lazily.

Every command takes Hydra-style overrides (`key=value`, `group=option`) after its own positional
arguments, e.g. `ixt train model=tiny learner.zero_stage=2` or `ixt serve reward reward.port=6000`.
A ConfigError from any command (a bad value, a port in use, an unreadable token file) is printed
as one line naming the setting, with exit code 2.
"""

from __future__ import annotations

import importlib
import sys

# command -> ("module" whose main(argv) runs it, or "module:function", help line)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("ixt_stream.online.main_job", "the main job: eval, online IXT loop, eval again, summary"),
    "serve": ("ixt_stream.services", "start one role in the foreground: reward | generator | orchestrator | learner"),
    "annotate": ("ixt_stream.offline.annotate", "stream a dataset through the reward service -> JSONL"),
    "train": ("ixt_stream.offline.train", "DeepSpeed learner on an annotated JSONL (IXT or baseline)"),
    "eval": ("ixt_stream.offline.evaluate", "held-out accuracy under positive / negative / no conditioning"),
    "up": ("ixt_stream.online.supervisor:up_main", "start the online stack in the background (run.run_dir)"),
    "status": ("ixt_stream.online.supervisor:status_main", "each service: pid, alive, progress"),
    "down": ("ixt_stream.online.supervisor:down_main", "stop the stack: SIGTERM, wait, SIGKILL"),
    "experiment": ("ixt_stream.experiment.main", "arms x scales x seeds: accuracy vs FLOPs, multiplier, report"),
    "ledger": ("ixt_stream.ledger", "a run's sample accounting: generated = trained + dropped + in flight"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    return f"usage: ixt <command> [args] [key=value ...]\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help") or argv[0] not in COMMANDS:
        sys.stderr.write(usage())
        return 0 if argv and argv[0] in ("-h", "--help", "help") else 2
    from ixt_stream.config import ConfigError

    module_name, _, func = COMMANDS[argv[0]][0].partition(":")
    entry = getattr(importlib.import_module(module_name), func or "main")
    try:
        return int(entry(argv[1:]) or 0)
    except ConfigError as e:  # a setting that cannot work: one line naming it, no traceback
        sys.stderr.write(f"ixt {argv[0]}: config error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
