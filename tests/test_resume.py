"""Resume after an interruption: a run killed hard (SIGKILL) and started again ends exactly where the uninterrupted run
does.

The kill is real: ``DUELIST_TEST_KILL_AT_BATCH=N`` (test-only) makes the training process SIGKILL itself after its N-th
forward/backward pass, so it dies at a known point — after a state was saved, in the middle of the next interval and in
the middle of a gradient-accumulation window.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import compose_train, run_cli
from duelist.core.errors import DuelistError
from duelist.runs.run_dir import RunDir
from duelist.runs.states import config_differences, find_state, pack, unpack

# augment=swap doubles the ~48 training rows: 12 batches of 8, 6 steps of 2 accumulated batches per epoch; 9 steps cross
# into the second epoch. Evaluations every 2 steps, states every 3 (after steps 3 and 6, the end of epoch 0). Pass 15 is
# the first half of step 8: the kill lands after the step-6 state, mid-interval and mid-accumulation, in epoch 1.
ARGS = [
    "model=tiny_gemma2",
    "trainer.lr=3e-4",
    "trainer.warmup_ratio=0.05",
    "data.max_rows=60",
    "trainer.max_steps=9",
    "trainer.batch_size=8",
    "trainer.grad_accum=2",
    "augment=swap",
    "trainer.eval_every=2",
    "trainer.save_every=3",
    "trainer.eval_batch_size=32",
]
KILL = {"DUELIST_TEST_KILL_AT_BATCH": "15"}
TIMING = {"runtime_s", "train/tokens_per_s", "train/seconds", "peak_rss_gb"}  # wall-clock: differ in any two runs


def same_results(a: Path, b: Path) -> None:
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert {k: v for k, v in ma.items() if k not in TIMING} == {k: v for k, v in mb.items() if k not in TIMING}
    pd.testing.assert_frame_equal(
        pd.read_parquet(a / "oof.parquet"), pd.read_parquet(b / "oof.parquet"), check_exact=True
    )
    assert json.loads((a / "history.json").read_text()) == json.loads((b / "history.json").read_text())
    for name in ("adapter/adapter_model.safetensors", "model/model.safetensors"):
        if (a / "checkpoint" / name).is_file():
            from safetensors.torch import load_file

            wa, wb = load_file(str(a / "checkpoint" / name)), load_file(str(b / "checkpoint" / name))
            assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def killed(args: list[str], run: Path, env: dict[str, str] = KILL) -> list[str]:
    """Run until the test-only kill; the names of the states it left."""
    res = run_cli("train.py", [*args, f"hydra.run.dir={run}"], env=env)
    assert res.returncode == -9, res.stderr[-2000:]  # SIGKILL
    assert not (run / "metrics.json").exists()
    return [p.name for p in sorted((run / "states").iterdir())]


@pytest.mark.slow
def test_killed_lora_run_resumes_to_the_same_results(tmp_path) -> None:
    from duelist.tasks.train import train

    args = [*ARGS, "lora=default"]
    train(compose_train([*args, "logger=none"]), tmp_path / "ref")  # the uninterrupted run, in this process
    assert not (tmp_path / "ref" / "states").exists()  # removed when the run finished

    run = tmp_path / "run"
    assert killed([*args, "logger=wandb"], run) == ["step-00000003", "step-00000006"]
    # a changed setting is refused, naming it
    with pytest.raises(
        DuelistError, match=r"was trained with other settings \(trainer\.lr: 0\.0003 -> 0\.001\); run the same command"
    ):
        find_state(compose_train([*args, "logger=wandb", "trainer.lr=1e-3"]), RunDir(run), 1)
    # settings that cannot change the result may differ (the evaluation batch size, the logger's)
    res = run_cli(
        "train.py",
        [*args, "logger=wandb", "logger.tags=[resumed]", "trainer.eval_batch_size=7", f"hydra.run.dir={run}"],
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from" in res.stdout and "step-00000006 (step 6, epoch 0)" in res.stdout  # saved as epoch 0 ended
    same_results(tmp_path / "ref", run)
    assert not (run / "states").exists()
    # the resumed process continued the killed one's W&B run (offline run folders end in the run id)
    ids = {p.name.rsplit("-", 1)[1] for p in (run / "wandb").glob("offline-run-*")}
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2 and len(ids) == 1

    # the same command after the end: nothing to do, the finished run's metric is returned
    done = json.loads((run / "metrics.json").read_text())
    assert train(compose_train([*args, "logger=none"]), run) == done["val/accuracy"]
    assert json.loads((run / "metrics.json").read_text()) == done


@pytest.mark.slow
def test_killed_full_fine_tuning_resumes_past_a_damaged_state(tmp_path) -> None:
    """Full fine-tuning; the newest state is damaged (as a disk error would leave it): the previous one is used, and the
    replay from step 2 crosses the epoch boundary."""
    from duelist.tasks.train import train

    args = [*ARGS, "lora=none", "trainer.lr=1e-4", "logger=none", "trainer.save_every=2", "trainer.eval_every=3"]
    train(compose_train(args), tmp_path / "ref")  # the uninterrupted run, in this process
    run = tmp_path / "run"
    assert killed(args, run, {"DUELIST_TEST_KILL_AT_BATCH": "11"}) == [
        "step-00000002",
        "step-00000004",
    ]  # keep_states=2
    weights = run / "states" / "step-00000004" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    res = run_cli("train.py", [*args, f"hydra.run.dir={run}"])
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert re.search(r"step-00000004: unreadable training state .*; the one before it", out), out[-3000:]
    assert "step-00000002 (step 2, epoch 0)" in out
    same_results(tmp_path / "ref", run)


@pytest.mark.fast
def test_no_usable_state_is_one_line(tmp_path) -> None:
    run = tmp_path / "run"
    (run / "states" / "step-00000004").mkdir(parents=True)
    (run / "states" / "step-00000004" / "state.json").write_text("{")
    (run / "states" / ".step-00000006.abc.tmp").mkdir()  # a state being written when the process died: never listed
    cfg = compose_train(["model=tiny_gemma2"])
    with pytest.raises(DuelistError, match=r"none of its 1 saved training states can be read"):
        find_state(cfg, RunDir(run), 1)
    assert find_state(compose_train(["model=tiny_gemma2", "trainer.resume=never"]), RunDir(run), 1) is None
    assert find_state(cfg, RunDir(tmp_path / "fresh"), 1) is None
    with pytest.raises(DuelistError, match="no saved training state there"):
        find_state(compose_train(["model=tiny_gemma2", f"trainer.resume={tmp_path / 'fresh'}"]), RunDir(run), 1)


@pytest.mark.fast
def test_config_differences_ignore_what_cannot_change_the_result() -> None:
    a = {
        "trainer": {"lr": 1e-3, "eval_batch_size": 64, "save_every": 50},
        "logger": {"tags": []},
        "data": {"train": ["x"]},
    }
    b = {
        "trainer": {"lr": 1e-3, "eval_batch_size": 8, "save_every": 10},
        "logger": {"tags": ["y"]},
        "data": {"train": ["x", "z"]},
        "new": 1,
    }
    assert config_differences(a, b) == ["data.train: ['x'] -> ['x', 'z']", "new: (absent) -> 1"]


leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.builds(
        lambda xs: torch.tensor(xs, dtype=torch.float64), st.lists(st.floats(allow_nan=False, width=64), max_size=4)
    ),
)
nested = st.recursive(
    leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 9)), kids, max_size=3)
    ),
    max_leaves=12,
)


def equal(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(equal, a, b))
    return type(a) is type(b) and a == b


@pytest.mark.fast
@settings(max_examples=60, deadline=None)
@given(nested)
def test_pack_round_trips_through_json_and_safetensors(value) -> None:
    from safetensors.torch import load, save

    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.loads(json.dumps(pack(value, tensors)))
    back = unpack(skeleton, load(save(tensors)) if tensors else {})
    assert equal(value, back)


@pytest.mark.fast
def test_starting_over_clears_what_an_abandoned_attempt_left(tmp_path) -> None:
    """trainer.resume=never: old states (which a later kill could otherwise resume, or which would push the new ones
    out of keep_states), half-written ones and a finished run's metrics.json are removed before training."""
    from duelist.models.kinds import kind_of
    from duelist.tasks.train import start_point

    run = tmp_path / "run"
    for name in ("step-00000500", ".step-00000550.x.tmp"):
        (run / "states" / name).mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    cfg = compose_train(["model=tiny_gemma2", "trainer.resume=never"])
    decision, state = start_point(cfg, RunDir(run), kind_of(cfg.model), 1)
    assert (decision, state) == ({}, None)
    assert list((run / "states").iterdir()) == [] and not (run / "metrics.json").exists()


@pytest.mark.slow
def test_a_state_resumes_only_on_the_rows_it_was_trained_on_and_from_another_run_dir(tmp_path) -> None:
    """A data file rewritten in place after the kill (the January workflow regenerates pl1.parquet) is refused,
    naming it; trainer.resume=PATH continues another run dir's state and ends where the uninterrupted run does."""
    from duelist.data.reading import load_pairs

    rows = load_pairs("pkg:duelist/assets/sample/pandalm_test.parquet", on_bad_rows="drop").iloc[:120]
    data = tmp_path / "pl1.parquet"
    rows.to_parquet(data)
    args = [
        "model=tiny_gemma2",
        "lora=default",
        "trainer.lr=3e-4",
        "data=files",
        f"data.train={data}",
        "logger=none",
        "trainer.max_steps=6",
        "trainer.batch_size=8",
        "trainer.save_every=2",
        "trainer.eval_batch_size=32",
    ]
    from duelist.tasks.train import train

    train(compose_train(args), tmp_path / "ref")  # the uninterrupted run, in this process
    first = tmp_path / "first"
    assert killed(args, first, {"DUELIST_TEST_KILL_AT_BATCH": "5"}) == ["step-00000002", "step-00000004"]

    rows.iloc[:100].to_parquet(data)  # rewritten in place: other rows
    res = run_cli("train.py", [*args, f"hydra.run.dir={first}"])
    assert res.returncode == 2 and not (first / "metrics.json").exists()
    assert (
        res.stderr.strip().splitlines()[-1].startswith(f"error: {data}: its rows are not the ones the training state")
    )
    rows.to_parquet(data)  # as it was: another run dir continues from the first one's newest state
    res = run_cli("train.py", [*args, f"trainer.resume={first}", f"hydra.run.dir={tmp_path / 'second'}"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming from {first / 'states' / 'step-00000004'} (step 4, epoch 0)" in res.stdout + res.stderr
    same_results(tmp_path / "ref", tmp_path / "second")
