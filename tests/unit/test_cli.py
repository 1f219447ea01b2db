"""`ixt <command>` under Hydra's own command line: help, --cfg, --info, errors, sweeps, completion.

The commands here run in-process with a stand-in entry (what Hydra hands the command, and where it
writes); `tests/integration/test_sweep.py` sweeps a real `ixt eval`.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from ixt_stream import cli, hydra_app
from ixt_stream.config import IxtConfig


def ixt(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Every test runs in an empty cwd, so anything Hydra writes there shows."""
    monkeypatch.chdir(tmp_path)


def _cpu_profile_lr() -> float:
    """The learning rate configs/profile/cpu.yaml sets (it differs from the dataclass default)."""
    from ixt_stream.hydra_app import CONFIG_DIR

    return float(yaml.safe_load((CONFIG_DIR / "profile" / "cpu.yaml").read_text())["learner"]["lr"])


def test_help_lists_the_commands_keys_with_their_docstrings(capsys, tmp_path):
    code, out, _ = ixt(capsys, "train", "--help")
    assert code == 0
    lines = out.splitlines()
    at = lines.index(f"  learner.lr = {_cpu_profile_lr()}")  # the cpu profile's value
    assert lines[at + 1].strip().startswith("Peak AdamW learning rate")
    assert "model: smollm2, tiny" in lines and "ixt train: DeepSpeed learner" in out
    assert "--cfg" in out and "  train.data = " in out and "  stream.host" not in out  # its own sections only
    code, out, _ = ixt(capsys, "train", "-h", "model=tiny", "learner.lr=0.5")
    assert code == 0 and "  model.name = tiny" in out and "  learner.lr = 0.5" in out
    assert os.listdir(tmp_path) == []


def test_cfg_job_prints_the_composed_config(capsys, tmp_path):
    code, out, _ = ixt(capsys, "train", "--cfg", "job", "model=tiny")
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["model"]["name"] == "tiny" and cfg["model"]["tiny"]["hidden_size"] == 64
    assert cfg["learner"]["lr"] == _cpu_profile_lr() and "hydra" not in cfg
    code, out, _ = ixt(capsys, "eval", "--cfg", "hydra")
    hydra = yaml.safe_load(out)["hydra"]
    assert hydra["run"]["dir"] == "${run.run_dir}" and hydra["job"]["chdir"] is False
    assert hydra["output_subdir"] == ".hydra/eval" and hydra["job"]["name"] == "eval"
    code, out, _ = ixt(capsys, "up", "--cfg", "all", "--resolve", "--package", "run")
    assert code == 0 and yaml.safe_load(out.split("\n", 1)[1])["run_dir"] == "runs/default"
    assert os.listdir(tmp_path) == []


def test_info_prints_the_defaults_tree(tmp_path):
    """In a process of its own: Hydra points its --info logger at stdout once per process."""
    done = subprocess.run([sys.executable, "-m", "ixt_stream.cli", "eval", "--info", "defaults"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ixt_eval" in done.stdout and "model/smollm2" in done.stdout and "hydra/job_logging/none" in done.stdout
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("override, message", [
    ("learner.zero_stage=two", "learner.zero_stage: Value 'two' of type 'str' could not be converted to Integer"),
    ("learner.no_such_knob=1", "learner.no_such_knob: Key 'no_such_knob' not in 'LearnerConfig'"),
    ("reward.backend=telepathy", "reward.backend: unknown backend 'telepathy'"),
    ("model=nope", "Could not find 'model/nope'"),
    ("learner.lr=[1", "no viable alternative at input '[1'"),
])
def test_a_bad_value_is_one_line_and_exit_2(capsys, override, message):
    code, out, err = ixt(capsys, "train", override)
    assert code == 2 and out == ""
    assert err.startswith("config error: ") and message in err and err.count("\n") == 1


def test_an_error_inside_the_command_that_names_a_field_is_one_line_too(capsys, tmp_path):
    code, _, err = ixt(capsys, "experiment", "experiment.arms=[ixt]", f"experiment.out_dir={tmp_path / 'exp'}")
    assert code == 2 and err == "config error: experiment.arms: need baseline, and only " \
        "baseline, filtered, ixt, label, shuffled, ixt_dropout (got ['ixt'])\n"
    assert (tmp_path / "exp" / ".hydra" / "experiment" / "config.yaml").exists()  # its run folder
    assert os.listdir(tmp_path) == ["exp"]


def test_a_failure_inside_the_command_keeps_its_traceback(tmp_path):
    def broken(cfg: IxtConfig, overrides: list[str]) -> int:
        raise ValueError("a bad row in the data")

    with pytest.raises(ValueError, match="a bad row in the data"):
        hydra_app.run(cli.COMMANDS["train"][1], [f"run.run_dir={tmp_path / 'r'}"], broken)


def _recording(calls: list):
    def entry(cfg: IxtConfig, overrides: list[str]) -> int:
        calls.append((cfg, overrides, os.getcwd()))
        return int(cfg.learner.lr > 1e-4)
    return entry


def test_a_run_gets_the_typed_config_and_records_it_in_its_run_dir(tmp_path):
    calls: list = []
    command = cli.COMMANDS["train"][1]
    code = hydra_app.run(command, ["model=tiny", f"run.run_dir={tmp_path / 'r'}"], _recording(calls))
    assert code == 0 and len(calls) == 1
    cfg, overrides, cwd = calls[0]
    assert isinstance(cfg, IxtConfig) and cfg.model.name == "tiny" and cwd == str(tmp_path)
    assert overrides == ["model=tiny", f"run.run_dir={tmp_path / 'r'}"]
    saved = yaml.safe_load((tmp_path / "r" / ".hydra" / "train" / "config.yaml").read_text())
    assert saved["model"]["name"] == "tiny"
    assert sorted(os.listdir(tmp_path)) == ["r"]


def test_a_sweep_runs_each_job_in_its_own_run_dir(tmp_path):
    calls: list = []
    command = cli.COMMANDS["train"][1]
    code = hydra_app.run(command, ["-m", "learner.lr=1e-5,1e-3", f"run.run_dir={tmp_path / 'r'}"], _recording(calls))
    assert code == 1  # the largest exit code of the jobs
    assert [c.learner.lr for c, _, _ in calls] == [1e-5, 1e-3]
    dirs = [c.run.run_dir for c, _, _ in calls]
    assert len(set(dirs)) == 2 and all(d.startswith(str(tmp_path / "r" / "sweep-")) for d in dirs)
    for (cfg, overrides, cwd), job in zip(calls, ("0", "1"), strict=True):
        assert cfg.run.run_dir.endswith(f"/{job}") and overrides[-1] == f"run.run_dir={cfg.run.run_dir}"
        assert cwd == str(tmp_path)
        assert (tmp_path / cfg.run.run_dir / ".hydra" / "train" / "overrides.yaml").exists()


def test_shell_completion_knows_commands_roles_and_keys(capsys, monkeypatch):
    for line, expected in [("ixt tr", "train"), ("ixt serve ", "reward learner orchestrator generator"),
                           ("ixt serve reward reward.po", "reward.port="),
                           ("ixt train model=", "model=smollm2 model=tiny")]:
        monkeypatch.setenv("COMP_LINE", line)
        code, out, _ = ixt(capsys, "-sc", "query=bash")
        assert code == 0 and out.strip() == expected, line
    code, out, _ = ixt(capsys, "--shell-completion", "install=bash")
    assert code == 0 and out.rstrip().endswith("-F hydra_bash_completion ixt")


def test_ixt_alone_lists_the_commands(capsys):
    code, _, err = ixt(capsys)
    assert code == 2 and "ledger" in err and "--help" in err
    assert ixt(capsys, "--help")[0] == 0


def test_ixt_run_hands_its_control_eval_the_trained_prefixes(tmp_path, monkeypatch):
    """`ixt run` evaluates the trained model, then the base model under the trained model's prefixes:
    the second `ixt eval` gets `eval.condition_from` and the conditions without `unseen`, and Hydra
    composes them (the stack and the evals themselves are stood in for)."""
    from ixt_stream.online import main_job

    class Stop(Exception):
        pass

    evals: list = []

    def fake_eval(overrides, checkpoint, out):
        evals.append((overrides, checkpoint))
        if len(evals) == 2:
            raise Stop
        return {}

    monkeypatch.setattr(main_job.supervisor, "up", lambda *a: {})
    monkeypatch.setattr(main_job.supervisor, "down", lambda *a, **k: {})
    monkeypatch.setattr(main_job, "wait_for_learner", lambda cfg, overrides: {})
    monkeypatch.setattr(main_job, "run_eval", fake_eval)
    run_dir, final = tmp_path / "r", tmp_path / "r" / "final"
    given = ["model=tiny", "eval.conditions=[positive,none,unseen]", f"run.run_dir={run_dir}"]
    with pytest.raises(Stop):
        hydra_app.run(cli.COMMANDS["run"][1], given, main_job.main)
    (after, trained), (control, _) = evals
    assert after == given and trained == str(final)
    assert control == ["model=tiny", f"run.run_dir={run_dir}", f"eval.condition_from={final}",
                       "eval.conditions=[positive,none]", "eval.cache=true"]
    calls: list = []
    assert hydra_app.run(cli.COMMANDS["eval"][1], control, _recording(calls)) == 0
    cfg = calls[0][0]
    assert cfg.eval.condition_from == str(final) and list(cfg.eval.conditions) == ["positive", "none"]
