"""The review page: written when a plain multirun ends, numbers checked against the run dirs' metrics.json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from browser import open_page
from conftest import TINY, html_tables, run_cli


@pytest.mark.slow
def test_plain_multirun_writes_a_review_page_and_groups_wandb_runs(tmp_path) -> None:
    sweep = tmp_path / "m"
    args = [
        "-m",
        "lora.r=4,8",
        *[a for a in TINY if a != "logger=none"],
        "logger=wandb",
        "trainer.eval_every=3",
        f"hydra.sweep.dir={sweep}",
    ]
    res = run_cli("train.py", args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"review page: {sweep / 'review.html'}" in res.stdout
    page = (sweep / "review.html").read_text()
    rows = html_tables(page)["runs"]
    assert [r["run"] for r in rows] == ["lora.r=4", "lora.r=8"]  # one row per run, named by what differs
    settings = [c for c in rows[0] if "=" not in c and c.startswith(("lora.", "trainer.", "model.", "data."))]
    assert settings == ["lora.r"]  # only the settings that differ between the runs
    for row in rows:  # the numbers are those of each run dir's metrics.json
        metrics = json.loads((sweep / ("0" if row["run"] == "lora.r=4" else "1") / "metrics.json").read_text())
        assert float(row["accuracy"]) == pytest.approx(metrics["val/accuracy"], abs=1e-4)
        assert float(row["log loss"]) == pytest.approx(metrics["val/log_loss"], abs=1e-4)
        assert float(row["longer-wins rule"]) == pytest.approx(metrics["val/baseline_longer_wins"], abs=1e-4)
        for lang, acc in metrics["val/accuracy_by_language"].items():
            assert float(row[f"acc {lang}"]) == pytest.approx(acc, abs=1e-4)
        assert row["minutes"] == f"{metrics['runtime_s'] / 60:.1f}"  # minutes to a tenth
    assert page.count("<tr class=best>") == 1
    assert "Curves of every run" in page and page.count("plotly.js") >= 1  # charts inline: the page opens offline
    opened = open_page(sweep / "review.html", tmp_path / "browser")  # as a user sees it, in a real browser, offline
    assert opened.errors == [] and opened.charts >= 2 and opened.charts_drawn == opened.charts, opened
    assert opened.distinct_colours > 50, opened
    acc = {job: json.loads((sweep / job / "metrics.json").read_text())["val/accuracy"] for job in ("0", "1")}
    first, second = sorted(acc, key=lambda job: -acc[job]) if acc["0"] != acc["1"] else ("0", "1")
    assert f"ensemble=weighted runs=[{sweep / first},{sweep / second}]" in page  # the ensemble command: best run first
    history = json.loads((sweep / "0" / "history.json").read_text())
    assert [step for step, _ in history["val/accuracy"]] == [3, 6] and len(history["train/loss"]) == 6

    # W&B: the multirun is one group, each run named by its overrides
    for job, name in (("0", "lora.r=4"), ("1", "lora.r=8")):
        cfg = OmegaConf.load(sweep / job / "config.yaml")
        assert cfg.logger.group == str(sweep) and cfg.logger.run_name == name
        assert list((sweep / job / "wandb").glob("offline-run-*/run-*.wandb"))

    # the W&B Report: built with the multirun's runset and the page's panels (publishing needs an online account)
    from duelist.tools.review import load_runs, wandb_report

    report = wandb_report(load_runs([sweep]), str(sweep))
    grid = report.blocks[1]
    assert [rs.filters for rs in grid.runsets] == [f"Group = '{sweep}' and JobType = 'train'"] and grid.runsets[
        0
    ].project == "duelist"
    kinds = [type(p).__name__ for p in grid.panels]
    assert kinds == [
        "LinePlot",
        "LinePlot",
        "ParallelCoordinatesPlot",
        "ParameterImportancePlot",
        "RunComparer",
        "BarPlot",
    ]
    assert [c.metric.name for c in grid.panels[2].columns] == ["lora.r", "val/accuracy"]
    assert grid.panels[0].y == ["val/accuracy"] and grid.panels[3].with_respect_to == "val/accuracy"
    offline = subprocess.run(
        [sys.executable, "-m", "duelist", "review", f"dir={sweep}", "wandb_report=true"], capture_output=True, text=True
    )
    assert (
        offline.returncode == 2
        and "publishing failed" in offline.stderr
        and "wandb login" in offline.stderr
        and "wandb sync" in offline.stderr
    )

    # on demand, for the same folder
    again = subprocess.run(
        [sys.executable, "-m", "duelist", "review", f"dir={sweep}", f"out={tmp_path / 'again.html'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    assert html_tables((tmp_path / "again.html").read_text())["runs"] == rows
    parent = subprocess.run(
        [sys.executable, "-m", "duelist", "review", f"dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=tmp_path / "m" / "0",
    )
    assert (
        parent.returncode == 0 and len(html_tables((tmp_path / "review.html").read_text())["runs"]) == 2
    )  # runs at any depth
    nothing = subprocess.run(
        [sys.executable, "-m", "duelist", "review", f"dir={sweep / '0' / '.hydra'}"], capture_output=True, text=True
    )
    assert nothing.returncode == 2 and "no finished run" in nothing.stderr


@pytest.mark.slow
def test_a_multirun_that_stops_at_a_failed_job_still_has_its_review_page(tmp_path) -> None:
    sweep = tmp_path / "m"
    args = [
        "-m",
        "trainer.lr=3e-4,1e12",
        *[a for a in TINY if not a.startswith("trainer.lr=")],
        "trainer.max_steps=3",
        f"hydra.sweep.dir={sweep}",
    ]
    res = run_cli("train.py", args, cwd=tmp_path)
    assert res.returncode != 0  # lr=1e12 blows the loss up: Hydra's basic sweeper stops the multirun
    rows = html_tables((sweep / "review.html").read_text())["runs"]  # written after each job, not only at the end
    assert len(rows) == 1 and float(rows[0]["accuracy"]) == pytest.approx(
        json.loads((sweep / "0" / "metrics.json").read_text())["val/accuracy"], abs=1e-4
    )


@pytest.mark.fast
def test_a_page_of_one_run_names_it_counts_rows_per_language_and_keeps_accuracy_below_one(tmp_path) -> None:
    from duelist.runs.run_dir import RunDir
    from duelist.tools.review import (
        MIN_LANGUAGE_ROWS,
        Run,
        _accuracy_figure,
        _curves_figure,
        _language_figure,
        review_html,
        runs_table,
    )

    metrics = {
        "val/accuracy": 0.97,
        "val/baseline_longer_wins": 0.95,
        "val/log_loss": 0.3,
        "val/accuracy_by_language": {"Chinese": 0.7, "Catalan": 1.0},
        "val/rows_by_language": {"Chinese": 161, "Catalan": 2},
        "runtime_s": 60.0,
    }
    config = {"model": {"name": "minilm"}, "lora": {"r": 64}}
    run = Run(RunDir(tmp_path / "07-30-13"), config, metrics, {"val/accuracy": [[40, 0.97]], "train/loss": [[1, 0.7]]})
    table = runs_table([run])
    assert list(table["run"]) == ["minilm (07-30-13)"]  # not "0", not the folder's time alone
    bars = _language_figure([run], list(table["run"])).data[0]
    assert list(bars.x) == ["Chinese (n=161)", "Catalan (n=2)"]  # most rows first, each with its n
    assert bars.marker.color[1] == "#bbbbbb" and bars.marker.color[0] != "#bbbbbb" and MIN_LANGUAGE_ROWS > 2
    assert _language_figure([run], ["x"]).layout.yaxis.range == (0.0, 1.0)
    assert _accuracy_figure(table).layout.yaxis.range[1] <= 1.0  # 0.97 with its label: the axis still ends at 1
    point = _curves_figure([run], ["x"], "val/accuracy").data[0]
    assert point.mode == "markers" and point.name == "x (evaluated once)"  # one evaluation is a point, not a curve
    assert "opens offline" in review_html("one run", [run])
