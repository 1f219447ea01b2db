"""One `ixt` command under Hydra's own command line (`@hydra.main`, per-command config names).

Each command gets a primary config of its own, `ixt_<command>` in the ConfigStore: configs/ixt.yaml
plus the command's Hydra settings. So `--help` (the command, its config groups, and every key it
reads with its value and docstring), `--cfg job|hydra|all [--resolve]`, `--info`, `-m` sweeps and
`--shell-completion` are Hydra's own. Settings, and why:
  - Hydra writes into the run folder, never `outputs/`, and keeps the cwd: `hydra.run.dir` is
    `run.run_dir`, the composed config goes to `run_dir/.hydra/<command>/` (one folder per
    command: `ixt run`, its `ixt eval`s and `ixt up` share a run folder). `serve`, `status` and
    `down` record nothing (the command that started the stack did).
  - A sweep job runs in `run.run_dir/sweep-<time>/<job number>` and gets that folder as its own
    `run.run_dir`, so jobs never share metrics, checkpoints or eval reports (`ixt experiment`:
    `experiment.out_dir` plays the part of `run.run_dir`).
  - Hydra logs only its own lines (`[hydra] Launching 2 jobs locally`); each command sets up
    logging itself, as before.
The job's config becomes the typed, validated IxtConfig before the command runs. A bad value (on
the command line, in a config file, or caught by `config.validate`) is one line,
`config error: <field>: <reason>`, exit code 2; an error inside the command itself keeps its
traceback.

Left out: Hydra's launcher and sweeper plugins (joblib, submitit, optuna). Nothing here assumes
the basic ones: install a plugin and pick it with `hydra/launcher=<name>`.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import json
import os
import sys
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

from ixt_stream import progress
from ixt_stream.config import CONFIG_DIR, ConfigError, IxtConfig, describe, register_schema, validate

Entry = Callable[[IxtConfig, list[str]], int | None]
"""A command: the validated config, and the overrides that reproduce it (forwarded to the
processes the command starts)."""

_FULL_ERROR = "HYDRA_FULL_ERROR"
_LOGGING = {  # hydra/hydra_logging=ixt: Hydra's own logger to stderr; the root logger is left alone
    "version": 1,
    "formatters": {"plain": {"format": "[hydra] %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {"hydra": {"level": "INFO", "handlers": ["stderr"], "propagate": False}},
    "root": {},  # Hydra applies a logging config only when it has a root entry; an empty one changes nothing
    "disable_existing_loggers": False,
}


@dataclasses.dataclass
class Command:
    name: str
    summary: str
    sections: tuple[str, ...]
    """Top-level config sections the command reads: its help page lists their keys."""
    records: bool = True
    """Hydra writes the composed config to `<run dir>/.hydra/<name>/` (False: nothing is written)."""
    dir_key: str = "run.run_dir"
    """The config key naming the command's run folder (a sweep job's folder replaces it)."""
    positional: str = ""
    """What comes before the overrides, for the usage line (`ixt serve <role> ...`)."""


def primary_config(command: Command) -> dict:
    """The command's primary config (`ixt_<name>`): configs/ixt.yaml + where Hydra may write."""
    return {
        "defaults": ["ixt", {"override hydra/hydra_logging": "ixt"}, {"override hydra/job_logging": "none"},
                     "_self_"],
        "hydra": {
            "job": {"name": command.name, "chdir": False},
            "run": {"dir": f"${{{command.dir_key}}}" if command.records else "."},
            "sweep": {"dir": f"${{{command.dir_key}}}/sweep-${{now:%Y%m%d-%H%M%S}}", "subdir": "${hydra.job.num}"},
            "output_subdir": f".hydra/{command.name}" if command.records else None,
            "help": {"app_name": f"ixt {command.name}", "template": f"${{ixt_help:{command.name}}}"},
        },
    }


def run(command: Command, argv: list[str], entry: Entry, prog: str = "") -> int:
    """Run `entry` under Hydra with `argv` (Hydra flags and overrides); returns the exit code
    (a sweep: the largest of its jobs'). `prog` names the program in Hydra's messages."""
    import hydra
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    register_schema()
    store = ConfigStore.instance()
    store.store(group="hydra/hydra_logging", name="ixt", node=_LOGGING)
    store.store(name=f"ixt_{command.name}", node=primary_config(command))
    OmegaConf.register_new_resolver("ixt_help", lambda name, *, _root_: help_page(command, _root_), replace=True)

    codes: list[int] = []
    user_full_error = os.environ.get(_FULL_ERROR) == "1"
    command_error: BaseException | None = None

    def task(node) -> None:
        nonlocal command_error
        try:
            cfg, overrides = job_config(node, command.dir_key)
            progress.configure(cfg.run.progress)
            with _env(_FULL_ERROR, "1" if user_full_error else None):
                codes.append(int(entry(cfg, overrides) or 0))
        except ConfigError as e:  # SystemExit passes Hydra's job wrapper without its error banner
            sys.stderr.write(f"config error: {e}\n")
            raise SystemExit(2) from None
        except Exception as e:  # the command's own failure: raised again below, traceback and all
            command_error = e
            raise

    main = hydra.main(config_path=str(CONFIG_DIR), config_name=f"ixt_{command.name}", version_base="1.3")(task)
    saved_argv = sys.argv
    sys.argv = [prog or f"ixt {command.name}", *argv]
    try:
        # Hydra prints its own errors and exits 1 unless HYDRA_FULL_ERROR=1; this way they come here.
        with _env(_FULL_ERROR, "1"):
            main()
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        if user_full_error or e is command_error:
            raise
        sys.stderr.write(f"config error: {describe(e)}\n")
        return 2
    except SystemExit as e:  # Hydra's --help and a failed job end this way; callers get a code
        if isinstance(e.code, str):
            sys.stderr.write(e.code + "\n")
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = saved_argv
    return max(codes, default=0)


def job_config(node, dir_key: str = "run.run_dir") -> tuple[IxtConfig, list[str]]:
    """The job's typed config and the overrides that reproduce it; in a sweep, `dir_key` (the run
    folder) is the job's own folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf, read_write
    from omegaconf.errors import OmegaConfBaseException

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    if hc.mode == RunMode.MULTIRUN:
        with read_write(node):
            OmegaConf.update(node, dir_key, hc.runtime.output_dir)
        overrides.append(f"{dir_key}={hc.runtime.output_dir}")
    try:
        return validate(OmegaConf.to_object(node)), overrides
    except (OmegaConfBaseException, ValueError) as e:
        raise ConfigError(describe(e)) from e


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    """Set (or, with None, unset) an environment variable for the block."""
    old = os.environ.get(name)
    _setenv(name, value)
    try:
        yield
    finally:
        _setenv(name, old)


def _setenv(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


# -- the help page ------------------------------------------------------------------------------


def help_page(command: Command, root) -> str:
    """Hydra's help template for `command`: what it does, the groups, each key with its value
    (after the overrides given with --help) and its docstring, Hydra's flags."""
    lines = [f"ixt {command.name}: {command.summary}", "",
             f"usage: ixt {' '.join(filter(None, [command.name, command.positional]))} [key=value | group=option ...] "
             "[-m] [--cfg job|hydra|all [--resolve]] "
             "[--info] [--shell-completion install=bash]", "",
             "== Config groups (group=option) ==", "$APP_CONFIG_GROUPS",
             "== Keys (key=value; the current value, then what it does) =="]
    docs = field_docs()
    for section in command.sections:
        cls = typing.get_type_hints(IxtConfig)[section]
        lines += ["", f"{section}: {_escape(docs.get((cls.__name__, ''), ''))}"]
        for key, doc in _leaves(cls, section, docs):
            lines.append(f"  {key} = {_escape(_value(root, key))}")
            lines += [f"      {_escape(line)}" for line in doc.splitlines()]
    lines += ["", "== Flags ==", "$FLAGS_HELP", "",
              f"Sweep: ixt {command.name} -m key=a,b (one job per value, each in run.run_dir/sweep-<time>/<n>)."]
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace("$", "$$")  # the page is a string.Template


def _leaves(cls, prefix: str, docs: dict) -> Iterator[tuple[str, str]]:
    """(dotted key, docstring) of every field under dataclass `cls`, nested dataclasses expanded."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, hint = f"{prefix}.{f.name}", hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _leaves(hint, key, docs)
        else:
            yield key, docs.get((cls.__name__, f.name), "")


def _value(root, key: str) -> str:
    from omegaconf import OmegaConf

    node = OmegaConf.select(root, key, throw_on_resolution_failure=False)
    if OmegaConf.is_config(node):
        text = json.dumps(OmegaConf.to_container(node, resolve=True))
    elif isinstance(node, bool):
        text = str(node).lower()
    elif node == "":
        text = '""'
    else:
        text = str(node)
    return text if len(text) <= 100 else text[:97] + "..."


_DOCS: dict[tuple[str, str], str] = {}


def field_docs() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the docstring under that field in config.py, and
    (class name, "") -> the class docstring. Read from the source: Python keeps neither."""
    if not _DOCS:
        from ixt_stream import config

        tree = ast.parse(Path(config.__file__).read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            _DOCS[(cls.name, "")] = (ast.get_docstring(cls) or "").split("\n\n")[0].replace("\n", " ")
            for field, doc in zip(cls.body, cls.body[1:], strict=False):
                if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                        and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                        and isinstance(doc.value.value, str)):
                    _DOCS[(cls.name, field.target.id)] = _dedent(doc.value.value)
    return _DOCS


def _dedent(doc: str) -> str:
    import textwrap

    first, _, rest = doc.strip().partition("\n")
    return "\n".join(filter(None, [first.strip(), textwrap.dedent(rest).strip()]))
