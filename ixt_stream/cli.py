"""`ixt <command> [key=value ...] [Hydra flags]`: one entry point, commands imported lazily.

Every command but `ledger` runs under Hydra's own command line (`hydra_app`): overrides
(`key=value`, `group=option`), `--help`, `--cfg job|hydra|all`, `--info`, `-m` sweeps. `ixt serve`
takes its role first (`ixt serve reward reward.port=6000`). Shell completion covers the command
names and each command's keys: `eval "$(ixt --shell-completion install=bash)"`.
A ConfigError from any command (a bad value, a port in use, an unreadable token file) is printed
as one line naming the setting, `config error: <field>: <reason>`, with exit code 2.
"""

from __future__ import annotations

import os
import sys

from ixt_stream import lazy
from ixt_stream.hydra_app import Command
from ixt_stream.roles import ROLES

_STACK = ("run", "metrics", "model", "task", "reward", "client", "condition", "learner", "generator", "stream",
          "launcher")

# command -> ("module:function" running it, its help line, the config sections it reads)
COMMANDS: dict[str, tuple[str, Command]] = {c.name: (target, c) for target, c in [
    ("ixt_stream.online.main_job:main",
     Command("run", "the main job: eval, online IXT loop, eval again, summary", (*_STACK, "eval"))),
    ("ixt_stream.roles:serve",
     Command("serve", f"start one role in the foreground: {' | '.join(ROLES)}", _STACK,
             records=False, positional="<role>")),
    ("ixt_stream.offline.annotate:main",
     Command("annotate", "stream a dataset through the reward service -> annotated JSONL or Parquet",
             ("run", "model", "task", "client", "generator", "condition", "annotate"))),
    ("ixt_stream.offline.train:main",
     Command("train", "DeepSpeed learner on annotated data (IXT or baseline)",
             ("run", "metrics", "model", "condition", "learner", "train"))),
    ("ixt_stream.offline.evaluate:main",
     Command("eval", "held-out accuracy under positive / negative / no conditioning",
             ("run", "model", "task", "condition", "generator", "eval"))),
    ("ixt_stream.online.launch:up_main",
     Command("up", "start the online stack in the background (run.run_dir)", _STACK)),
    ("ixt_stream.online.launch:status_main",
     Command("status", "each service: pid, alive, progress", ("run", "launcher"), records=False)),
    ("ixt_stream.online.launch:down_main",
     Command("down", "stop the stack: SIGTERM, wait, SIGKILL", ("run", "launcher"), records=False)),
    ("ixt_stream.experiment.main:main",
     Command("experiment", "feedback-conditioned pre-training in miniature: arms x sizes x seeds, multiplier, report",
             ("run", "reward", "experiment"), dir_key="experiment.out_dir")),
]}
LEDGER = ("ixt_stream.ledger:main", "a run's sample accounting: generated = trained + dropped + in flight")
_COMPLETION = ("-sc", "--shell-completion")


def usage() -> str:
    helps = {name: c.summary for name, (_, c) in COMMANDS.items()} | {"ledger": LEDGER[1]}
    width = max(map(len, helps))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, help_ in helps.items())
    return (f"usage: ixt <command> [key=value ...] [--help | --cfg job | --info | -m ...]\n\ncommands:\n{rows}\n\n"
            "`ixt <command> --help` lists the command's config groups and keys with what each one does.\n")


_load = lazy.resolve


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if flag := next((a for a in argv if a in _COMPLETION), None):
        return shell_completion(argv[argv.index(flag):])
    name = argv[0] if argv else ""
    if name == "ledger":
        return int(_load(LEDGER[0])(argv[1:]) or 0)
    if name not in COMMANDS:
        sys.stderr.write(usage())
        return 0 if name in ("-h", "--help", "help") else 2
    from ixt_stream import hydra_app

    target, command = COMMANDS[name]
    rest, extra = argv[1:], []
    if name == "serve":
        if not rest or rest[0] not in ROLES:
            sys.stderr.write(f"usage: ixt serve <role> [key=value ...] (--help after the role)\n"
                             f"roles: {', '.join(ROLES)}\n")
            return 0 if rest[:1] in (["-h"], ["--help"]) else 2
        extra, rest = [rest[0]], rest[1:]
    entry = _load(target)
    return hydra_app.run(command, rest, lambda cfg, overrides: entry(cfg, overrides, *extra))


def shell_completion(argv: list[str]) -> int:
    """`ixt -sc install=bash` prints Hydra's bash hook; the hook calls `ixt -sc query=bash` with the
    line in COMP_LINE, answered here for command (and role) names and by the command's Hydra
    completion for keys (the line it sees has the command and role taken out)."""
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    command, role_needed = (words[1] if len(words) > 1 else ""), False
    if any(a.startswith("query") for a in argv[1:]):
        typing_word = len(words) - (0 if line.endswith(" ") else 1)  # index of the word being typed
        role_needed = command == "serve"
        choices = [*COMMANDS, "ledger"] if typing_word <= 1 else ROLES if role_needed and typing_word == 2 else None
        if choices is not None:
            print(" ".join(c for c in choices if c.startswith(words[typing_word] if typing_word < len(words) else "")))
            return 0
        if command not in COMMANDS:
            return 0
        keep = [words[0], *words[2 + role_needed:]]
        os.environ["COMP_LINE"] = " ".join(keep) + (" " if line.endswith(" ") else "")
    else:
        command = "run"  # install / uninstall: the hook is the same for every command
    from ixt_stream import hydra_app

    return hydra_app.run(COMMANDS[command][1], argv, lambda cfg, overrides: 0, prog="ixt")


if __name__ == "__main__":
    sys.exit(main())
