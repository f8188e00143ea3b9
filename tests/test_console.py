"""What a user reads: each entry point's help, the closing lines of train.py and infer.py (also in the job's log),
plain progress lines off a terminal, the registry table, the OOF-only ensemble report, the adapter's card."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import CONF, ROOT, TINY, WSDM_EXAMPLE, compose_infer, compose_train, run_cli
from duelist.core.command_line import entry_point_groups
from duelist.core.errors import DuelistError
from duelist.core.progress import Progress
from duelist.models.kinds import kind_of


def accuracy(p_a: np.ndarray, winner: np.ndarray) -> float:
    """Share of rows whose predicted winner is right (p_a >= 0.5 predicts A), computed here without duelist."""
    predicted = np.where(np.asarray(p_a) >= 0.5, "model_a", "model_b")
    return float(np.mean(predicted == np.asarray(winner)))


@pytest.mark.fast
@pytest.mark.parametrize("entry, other", [("train", "infer"), ("infer", "train")])
def test_each_entry_point_has_its_own_help(entry, other) -> None:
    res = run_cli(f"{entry}.py", ["--help"])
    assert res.returncode == 0, res.stderr
    page = res.stdout
    listed = re.findall(r"^  ([a-z_]+) {2,}\S", page.split("Groups")[1].split("Examples")[0], flags=re.M)
    groups = entry_point_groups(CONF)
    assert sorted(listed) == sorted(groups[entry])  # its own groups, each once
    for group in groups[entry]:  # every option of each group is named
        for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
            assert re.search(rf"\b{option}\b", page), (group, option)
    assert not set(groups[other]) - set(groups[entry]) & set(listed)  # none of the other script's groups
    assert page.count(f"python {entry}.py") >= 6 and f"python {entry}.py --cfg job -p" in page  # examples, keys


@pytest.mark.fast
def test_a_group_of_the_other_entry_point_is_named_in_one_line() -> None:
    res = run_cli("train.py", ["ensemble=weighted"])
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "ensemble: not a group of train.py; it is a group of infer.py" in res.stderr


@pytest.mark.fast
def test_the_next_command_scores_a_test_file_that_is_there(tmp_path, monkeypatch) -> None:
    from duelist.tasks.train import next_command

    monkeypatch.chdir(ROOT)  # a checkout: its WSDM example file
    assert (
        next_command("run")
        == f"python infer.py runs=[run] data.test={WSDM_EXAMPLE.relative_to(ROOT)} output=submission.csv"
    )
    monkeypatch.chdir(tmp_path)  # nothing to score yet: the example files first
    assert next_command("run").startswith(
        "python -m duelist example-data && python infer.py runs=[run] data.test=test.parquet"
    )
    (tmp_path / "test.parquet").write_bytes(WSDM_EXAMPLE.read_bytes())
    assert next_command("run") == "python infer.py runs=[run] data.test=test.parquet output=submission.csv"


def test_train_and_infer_end_with_a_closing_block_and_plain_progress_off_a_terminal(tmp_path) -> None:
    run = tmp_path / "run"
    res = run_cli("train.py", [*TINY, f"hydra.run.dir={run}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    acc, rule = metrics["val/accuracy"], metrics["val/baseline_longer_wins"]
    gap = f"{abs(acc - rule) * 100:.1f} points {'above' if acc > rule else 'below'}" if acc != rule else "level with"
    block = res.stdout.strip().splitlines()[-4:]
    assert block[0] == (
        f"val/accuracy {acc:.4f}: {gap} the longer-answer rule ({rule:.4f}) on "
        f"{metrics['val/rows']} validation pairs; val/log_loss {metrics['val/log_loss']:.4f}"
    )
    assert re.fullmatch(r"time: \d+ s", block[1]) and block[2] == f"run dir: {run.resolve()}"
    # no test file here: the next command writes the example files first, so it runs as printed
    assert block[3] == (
        "next: python -m duelist example-data && python infer.py runs=[run] data.test=test.parquet "
        "output=submission.csv"
    )
    log_lines = (run / "train.log").read_text().strip().splitlines()
    assert [line.split(" - ", 1)[-1] for line in log_lines[-4:]] == block  # the log file ends the same way
    # redirected output: no bar redraws or cursor escapes, one plain line per bar at its end (the run is short)
    output = res.stdout + res.stderr
    assert "\r" not in output and "\x1b[" not in output
    assert re.search(r"train: 6/6 steps \(100%\), [\d.,]+ (s/step|steps/s), loss [\d.]+", output)
    assert "validate:" not in output  # a validation pass is quiet
    # the adapter carries its base and a card with the kept step's numbers
    adapter = run / "checkpoint" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"
    card = (adapter / "README.md").read_text()
    assert f"accuracy {acc:.4f} (the longer-answer rule: {rule:.4f})" in card and "python infer.py runs=" in card
    assert f"step {metrics['best_step']}:" in card

    # the next command, as printed (this interpreter, and infer.py where the checkout has it)
    command = block[3].removeprefix("next: ").replace("python infer.py", f"python {ROOT / 'infer.py'}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    res = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = len(pd.read_parquet(tmp_path / "test.parquet"))
    share = float((pd.read_csv(tmp_path / "submission.csv")["winner"] == "model_a").mean())
    assert res.stdout.strip().splitlines()[-1] == (
        f"submission: {tmp_path.resolve() / 'submission.csv'} ({rows} rows; A predicted for {share:.0%} of them)"
    )
    assert f"score run: {rows}/{rows} rows" in res.stdout + res.stderr  # the bar names the run
    assert "Loading weights" not in res.stdout + res.stderr


@pytest.mark.fast
def test_an_infer_call_that_stops_leaves_no_empty_job_folder(tmp_path) -> None:
    res = run_cli("infer.py", [f"hydra.run.dir={tmp_path / 'job'}"], cwd=tmp_path)
    assert res.returncode == 2 and "runs=[RUN_DIR,...] data.test=test.parquet" in res.stderr
    assert not (tmp_path / "job").exists()


@pytest.mark.fast
def test_progress_lines_count_only_the_work_and_give_an_eta(caplog) -> None:
    caplog.set_level(logging.INFO, logger="duelist.progress")
    bar = Progress(4, "work", "rows", every=0.0)
    assert bar.bar is None  # pytest captures stderr: not a terminal
    bar.update(1)
    bar.pause()
    time.sleep(0.3)  # other work (a validation pass): not counted in the rate
    bar.resume()
    bar.update(1, loss="0.5")
    assert bar.elapsed() < 0.2
    eta = bar.eta()
    assert eta is not None and eta == pytest.approx(bar.elapsed(), rel=0.5)  # half done: as long again
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("work: 1/4 rows (25%), ") and ", ETA " in lines[0]
    assert lines[1].startswith("work: 2/4 rows (50%), ") and "loss 0.5" in lines[1]
    assert len(lines) == 3 and lines[2].startswith("work: 2/4 rows (50%)")  # and one at the end


def fake_runs(root, specs: dict[str, dict]) -> list:
    """Finished run dirs without weights: config (``overrides``), metrics and an oof.parquet of ``p_a``."""
    rng = np.random.default_rng(0)
    n = 60
    winner = np.where(rng.random(n) < 0.5, "model_a", "model_b")
    rule = np.where(rng.random(n) < 0.6, np.where(winner == "model_a", 0.55, 0.45), 0.5)
    runs = []
    for name, spec in specs.items():
        run = root / name
        (run / "checkpoint").mkdir(parents=True)
        cfg = compose_train(["logger=none", *spec["overrides"]])
        OmegaConf.save(cfg, run / "config.yaml")
        OmegaConf.save(cfg, run / "checkpoint" / "config.yaml")
        p_a = np.clip(np.where(winner == "model_a", 0.5, -0.5) * spec["skill"] + rng.normal(0.5, 0.25, n), 0, 1)
        pd.DataFrame(
            {
                "id": [f"r{i}" for i in range(n)],
                "p_a": p_a,
                "winner": winner,
                "language": "English",
                "target": (winner == "model_a").astype(float),
                "prompt_key": [hashlib.sha1(f"p{i // 2}".encode()).hexdigest() for i in range(n)],
                "rule_p_a": rule,
            }
        ).to_parquet(run / "oof.parquet")
        metrics = {
            "val/accuracy": accuracy(p_a, winner),
            "val/log_loss": 0.69,
            "val/baseline_longer_wins": accuracy(rule, winner),
            "runtime_s": spec["seconds"],
            "best_step": 1,
            "unused_settings": list(kind_of(cfg.model).unused),  # as train() writes it
        }
        (run / "metrics.json").write_text(json.dumps(metrics))
        runs.append((run, p_a, winner, rule))
    return runs


@pytest.mark.fast
def test_the_registry_table_names_what_sets_runs_apart(tmp_path, capsys) -> None:
    from duelist.runs import registry

    fake_runs(
        tmp_path,
        {
            "r8": {"overrides": ["model=tiny_gemma2", "lora.r=8"], "skill": 0.6, "seconds": 90.0},
            "r16": {"overrides": ["model=tiny_gemma2", "lora.r=16"], "skill": 0.2, "seconds": 150.0},
        },
    )
    assert registry.main([f"roots=[{tmp_path}]"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = "run dir  model  val/accuracy  rule  val/log_loss  minutes  finished  settings that differ"
    assert lines[0].split() == header.split()
    best, other = lines[1], lines[2]
    # a feature model among them: none of the adapters' settings (it has none), and at most 4 settings a row
    fake_runs(tmp_path, {"f": {"overrides": ["model=features", "lora.r=32"], "skill": 0.1, "seconds": 10.0}})
    fake_runs(
        tmp_path,
        {
            "wide": {
                "overrides": [
                    "model=tiny_gemma2",
                    *(f"trainer.{k}=0.5" for k in ("lr", "head_lr", "weight_decay", "warmup_ratio")),
                ],
                "skill": 0.0,
                "seconds": 10.0,
            }
        },
    )
    assert registry.main([f"roots=[{tmp_path}]"]) == 0
    rows = {line.split()[0].rsplit("/", 1)[-1]: line for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert "lora." not in rows["f"] and "trainer." not in rows["f"] and "lora.r=8, " in rows["r8"]
    assert rows["wide"].rstrip().endswith("+1 more")  # lora.r, trainer.lr, head_lr, weight_decay, warmup_ratio
    assert best.split()[0].endswith("r8") and best.rstrip().endswith("lora.r=8")  # best first, its own setting
    assert other.rstrip().endswith("lora.r=16") and " 2.5 " in other and " 1.5 " in best  # minutes
    assert re.search(r"  \d{4}-\d\d-\d\d \d\d:\d\d  ", best)  # to the minute
    assert "None" not in "\n".join(lines) and "nan" not in "\n".join(lines)
    assert lines[-1].startswith("rule: the longer-answer rule")


@pytest.mark.fast
def test_the_oof_task_scores_an_ensemble_without_a_test_file(tmp_path, capsys, monkeypatch) -> None:
    from duelist.tasks.infer import infer

    monkeypatch.chdir(tmp_path)
    (a, p_a, winner, rule), (b, p_b, _, _) = fake_runs(
        tmp_path,
        {
            "a": {"overrides": ["model=tiny_gemma2"], "skill": 0.6, "seconds": 60.0},
            "b": {"overrides": ["model=tiny_llama"], "skill": 0.3, "seconds": 60.0},
        },
    )
    (tmp_path / "ens.ensemble.json").write_text('{"weights": "of the submission ens.csv"}')  # a submission's own
    cfg = compose_infer(["task=oof", "runs=[a,b]", "ensemble=weighted", "output=ens.csv"])
    report = infer(cfg)
    out = capsys.readouterr().out
    rows = {line[:25].strip(): line[25:].split() for line in out.splitlines() if line.startswith("  ")}
    assert float(rows["a"][0]) == pytest.approx(accuracy(p_a, winner), abs=5e-5)  # members named by run
    assert float(rows["b"][0]) == pytest.approx(accuracy(p_b, winner), abs=5e-5)
    assert float(rows["longer-answer rule"][0]) == pytest.approx(accuracy(rule, winner), abs=5e-5)
    assert float(rows["mean"][0]) == pytest.approx(accuracy((p_a + p_b) / 2, winner), abs=5e-5)
    w = report["weights"]["*"]
    table = [line.split() for line in out.splitlines()[-3:-1]]
    assert table == [["weights", "a", "b"], ["*", f"{w[0]:.2f}", f"{w[1]:.2f}"]]  # the weights, one row per language
    assert float(rows["ensemble"][0]) == pytest.approx(accuracy(w[0] * p_a + w[1] * p_b, winner), abs=5e-5)
    assert "ensemble, cross-fitted" in out and "member0" not in out
    assert json.loads((tmp_path / "ens.oof.json").read_text())["weights"] == report["weights"]
    assert (
        json.loads((tmp_path / "ens.ensemble.json").read_text())["weights"] == "of the submission ens.csv"
    )  # untouched
    assert not (tmp_path / "ens.csv").exists()  # no submission
    with pytest.raises(DuelistError, match="task=oof: which runs?"):
        infer(compose_infer(["task=oof"]))
