"""``python -m duelist COMMAND``: one command line for the tools, each command with its own ``--help``."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.fast


def duelist(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "duelist", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_without_a_command_it_lists_them_and_fails() -> None:
    res = duelist()
    assert res.returncode == 2
    for command in ("runs", "review", "export", "kaggle", "bench", "footprint", "plan", "eda", "example-data"):
        assert f"python -m duelist {command}" in res.stdout


def test_help_lists_the_commands_and_succeeds() -> None:
    res = duelist("--help")
    assert "``" not in res.stdout  # plain text, not reStructuredText
    assert res.returncode == 0 and "python -m duelist export run=RUN out=DIR" in res.stdout


def test_an_unknown_command_is_one_line_and_exit_2() -> None:
    res = duelist("exprot")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        "error: unknown command 'exprot'; one of runs, review, export, kaggle, bench, footprint, plan, eda, "
        "example-data"
    )


def test_each_command_has_its_own_help_and_runs(tmp_path) -> None:
    shown = duelist("runs", "--help").stdout
    assert shown.startswith("python -m duelist runs [key=value ...]") and "  sort=str  (default: val/accuracy)" in shown
    res = duelist("runs", f"roots=[{tmp_path}]")
    assert res.returncode == 0 and res.stdout.strip() == f"no finished runs under {tmp_path}"
    res = duelist("example-data", f"out={tmp_path}", "reward_model=true")
    assert res.returncode == 0 and (tmp_path / "train.parquet").is_file() and (tmp_path / "test.parquet").is_file()
    assert "\r" not in res.stdout + res.stderr  # no library progress bar redrawn into redirected output


@pytest.mark.parametrize(
    "args, says",
    [
        (["runs", "--sort", "val/log_loss"], "'--sort' is not key=value (as key=value: sort=...)"),
        (["runs", "sortt=val/log_loss"], "no option sortt"),
        (["runs", "top=many"], "top"),
        (["kaggle", "runs=[a]", "out=b", "quantization=int4"], "quantization"),
        (["export", "out=b"], "give run=..."),
    ],
)
def test_every_command_takes_key_value_options_and_a_wrong_one_is_one_line(args, says) -> None:
    res = duelist(*args)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert says in res.stderr and "known options:" in res.stderr


@pytest.mark.parametrize(
    "command", ["runs", "review", "export", "kaggle", "bench", "footprint", "plan", "eda", "example-data"]
)
def test_every_help_page_is_plain_text(command: str) -> None:
    res = duelist(command, "--help")
    assert res.returncode == 0 and "``" not in res.stdout and "[str  " not in res.stdout, res.stdout


def test_eda_has_its_own_help() -> None:
    res = duelist("eda", "--help")
    assert res.returncode == 0 and res.stdout.startswith("Exploratory report of a preference dataset")
    assert "python train.py [GROUP=OPTION" not in res.stdout
