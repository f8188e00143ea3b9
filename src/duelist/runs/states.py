"""Resume training after an interruption: the resumable training state of a run dir.

Every ``trainer.save_every`` optimizer steps, :func:`save_state` writes ``RUN/states/step-NNNNNNNN/``
atomically (it appears complete or not at all)::

    state.json             step, epoch, position in the epoch, curves so far, best metric, LR scheduler, GradScaler,
                           Python/NumPy RNG states of every process, the W&B run id, the resolved run config
    trainable.safetensors  the trainable weights (adapters + head, or every weight), gathered under FSDP
    optimizer.safetensors  the optimizer state (tensors; the rest of it is in optimizer.json), gathered under FSDP
    optimizer.json
    arrays.safetensors     this epoch's batch order, the torch RNG states, the best checkpoint's validation p_a
    best/                  hard links to the files of RUN/checkpoint as it was (the best model so far)

Only the last ``trainer.keep_states`` states are kept; ``states/`` is removed when the run finishes.
:func:`find_state` picks what ``trainer.resume`` (auto | never | PATH) asks for, refuses a state of a
different config (naming the keys) and skips an unreadable state for the one before it.
Nothing is pickled: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from duelist.core.config import flatten, names_one_of
from duelist.core.errors import DuelistError
from duelist.core.files import atomic_dir
from duelist.runs.run_dir import RunDir
from duelist.runs.upgrade import upgraded

log = logging.getLogger(__name__)

STATES = "states"
STATE_NAME = re.compile(r"^step-(\d{8})$")
# config keys that cannot change what training computes: they may differ between a run and its resumption
IGNORED = (
    "logger.",
    "cache_dir",
    "trainer.eval_batch_size",
    "trainer.save_every",
    "trainer.keep_states",
    "trainer.resume",
    "trainer.dist_timeout_min",
)


# ------------------------------------------------------------------------- nested values <-> JSON + tensors
def pack(value: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """``value`` as JSON, its tensors moved into ``tensors`` under new keys ``{prefix}.{n}`` (``{"__tensor__": key}``
    stands for each). Dicts whose keys are not all strings (``{0: ...}``) become ``{"__items__": [[key, value], ...]}``;
    tuples become lists."""
    if torch.is_tensor(value):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        return pack(torch.from_numpy(np.ascontiguousarray(value)), tensors, prefix)
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: pack(v, tensors, prefix) for k, v in value.items()}
        return {"__items__": [[k, pack(v, tensors, prefix)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [pack(v, tensors, prefix) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a {type(value).__name__} in a training state")


def unpack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        if set(value) == {"__items__"}:
            return {k: unpack(v, tensors) for k, v in value["__items__"]}
        return {k: unpack(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [unpack(v, tensors) for v in value]
    return value


def _write(folder: Path, name: str, value: Any) -> None:
    """``name.json`` (+ ``name.safetensors`` when ``value`` holds tensors)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = pack(value, tensors)
    if tensors:
        save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(skeleton))


def _read(folder: Path, name: str) -> Any:
    from safetensors.torch import load_file

    tensor_file = folder / f"{name}.safetensors"
    tensors = load_file(str(tensor_file)) if tensor_file.is_file() else {}
    return unpack(json.loads((folder / f"{name}.json").read_text()), tensors)


# ------------------------------------------------------------------------- RNG states
def rng_state(generator: np.random.Generator) -> dict[str, Any]:
    """Every random number source training draws from, in this process."""
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "batches": generator.bit_generator.state,  # the sampler: it shuffles each epoch's batches
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict[str, Any]:
    state = np.random.get_state(legacy=False)
    return {
        **state,
        "state": {**state["state"], "key": state["state"]["key"].astype(np.int64)},
    }  # uint32 -> a safetensors dtype


def set_rng_state(state: dict[str, Any], generator: np.random.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = dict(state["numpy"])
    numpy["state"] = {**numpy["state"], "key": numpy["state"]["key"].numpy().astype(np.uint32)}
    np.random.set_state(numpy)
    generator.bit_generator.state = state["batches"]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------- the state
@dataclass
class TrainingState:
    """The training loop's progress, which ``fit`` updates as it goes and a resumable state saves."""

    step: int = 0  # optimizer steps done (states are saved between steps: step * grad_accum passes done)
    epoch: int = 0
    position: int = 0  # this process's batches of the epoch done
    batches: list[np.ndarray] | None = None  # the epoch's batch order (every process's); None: draw the next epoch's
    tokens: int = 0  # real (unpadded) tokens trained on
    elapsed_s: float = 0.0  # training seconds before this process started (a resumed run's earlier attempts)
    train_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss)
    evals: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (step, validation metrics)
    best: dict[str, Any] | None = None  # the best evaluation: step, metrics, p_a, train/tokens_per_s, tokens, seconds


@dataclass
class SavedState:
    """A resumable state as read back: the loop's progress and everything else it needs to continue."""

    path: Path
    progress: TrainingState
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    rng: list[dict[str, Any]]  # per process
    wandb_id: str | None
    config: dict[str, Any]
    processes: int
    data: dict[str, str] = field(default_factory=dict)  # digest of each data file's rows (data.splits.fingerprints)
    weights: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)
    optimizer: dict[str, Any] = field(repr=False, default_factory=dict)


def state_dirs(run: RunDir) -> list[Path]:
    """Complete states of ``run``, newest first (a half-written one is a hidden ``.step-*.tmp`` folder, never
    listed)."""
    folder = run.path / STATES
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and STATE_NAME.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _link_tree(source: Path, target: Path) -> None:
    """``target`` as hard links to ``source``'s files (free: a checkpoint is replaced by a new folder, never rewritten
    in place, so the linked files keep their content); copies where links are impossible."""
    for file in source.rglob("*"):
        dest = target / file.relative_to(source)
        if file.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(file, dest)
        except OSError:
            shutil.copy2(file, dest)


def save_state(run: RunDir, state: SavedState, keep: int) -> Path:
    """Write ``state`` as ``RUN/states/step-NNNNNNNN`` (atomically), then drop all but the newest ``keep`` states."""
    from safetensors.torch import save_file

    progress = state.progress
    final = run.path / STATES / f"step-{progress.step:08d}"
    with atomic_dir(final) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in state.weights.items()}, str(tmp / "trainable.safetensors")
        )
        _write(tmp, "optimizer", state.optimizer)
        arrays = {
            "batches": torch.from_numpy(np.concatenate(progress.batches).astype(np.int64)),
            "batch_sizes": torch.tensor([len(b) for b in progress.batches], dtype=torch.int64),
        }
        rng: list[Any] = []
        for rank, process in enumerate(state.rng):
            rng.append(pack(process, arrays, f"rng{rank}"))
        best = None
        if progress.best is not None:
            arrays["best_p_a"] = torch.from_numpy(np.asarray(progress.best["p_a"], dtype=np.float64))
            best = {k: v for k, v in progress.best.items() if k != "p_a"}
            if run.has_checkpoint():
                _link_tree(run.checkpoint, tmp / "best")
        info = {
            "step": progress.step,
            "epoch": progress.epoch,
            "position": progress.position,
            "tokens": progress.tokens,
            "elapsed_s": progress.elapsed_s,
            "train_curve": progress.train_curve,
            "evals": progress.evals,
            "best": best,
            "scheduler": pack(state.scheduler, arrays, "scheduler"),
            "scaler": pack(state.scaler, arrays, "scaler"),
            "rng": rng,
            "wandb_id": state.wandb_id,
            "config": state.config,
            "processes": state.processes,
            "data": state.data,
        }
        save_file(arrays, str(tmp / "arrays.safetensors"))
        (tmp / "state.json").write_text(json.dumps(info, default=float))  # last: a state without it is incomplete
    for old in state_dirs(run)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(path: Path, tensors: bool = True) -> SavedState:
    """Read a state folder completely (any damage raises here, not halfway through training); ``tensors=False``: all
    but the weights and the optimizer state (a process other than rank 0, which receives them from rank 0)."""
    from safetensors.torch import load_file

    info = json.loads((path / "state.json").read_text())
    arrays = load_file(str(path / "arrays.safetensors"))
    sizes = arrays["batch_sizes"].tolist()
    flat = arrays["batches"].numpy()
    batches = np.split(flat, np.cumsum(sizes)[:-1]) if sizes else []
    best = info["best"]
    if best is not None:
        best = {**best, "p_a": arrays["best_p_a"].numpy()}
        if not (path / "best").is_dir():
            raise ValueError("best/ (the best checkpoint so far) is missing")
    progress = TrainingState(
        step=info["step"],
        epoch=info["epoch"],
        position=info["position"],
        batches=batches,
        tokens=info["tokens"],
        elapsed_s=info["elapsed_s"],
        train_curve=[tuple(p) for p in info["train_curve"]],
        evals=[(s, m) for s, m in info["evals"]],
        best=best,
    )
    return SavedState(
        path=path,
        progress=progress,
        scheduler=unpack(info["scheduler"], arrays),
        scaler=unpack(info["scaler"], arrays),
        rng=[unpack(r, arrays) for r in info["rng"]],
        wandb_id=info["wandb_id"],
        config=info["config"],
        processes=info["processes"],
        data=info.get("data", {}),  # empty: a state written before data fingerprints
        weights=load_file(str(path / "trainable.safetensors")) if tensors else {},
        optimizer=_read(path, "optimizer") if tensors else {},
    )


def restore_best(state: SavedState, run: RunDir) -> None:
    """Put the state's best checkpoint back as ``RUN/checkpoint`` (a newer one written after the state was saved is
    replaced: training from the state reaches it again)."""
    if state.progress.best is None:
        return
    with atomic_dir(run.checkpoint) as tmp:
        _link_tree(state.path / "best", tmp)


def config_differences(saved: dict[str, Any], current: dict[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """``key: saved -> current`` for every setting that differs, except those in :data:`IGNORED` and ``ignore`` (keys
    or prefixes ending in ``.``: settings the model kind does not use). A key that one side lacks and the other has as
    None is the same (a schema that gained or lost a key that does not apply); network keys added after a run was
    written count with the value it was trained with."""
    saved = upgraded({**saved, "model": dict(saved["model"])} if isinstance(saved.get("model"), dict) else dict(saved))
    a, b = flatten(saved), flatten(current)
    skip = (*IGNORED, *ignore)
    keys = sorted(k for k in set(a) | set(b) if not names_one_of(k, skip))
    return [f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}" for k in keys if a.get(k) != b.get(k)]


def resolved(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def check_same_config(
    saved: dict[str, Any],
    cfg: DictConfig,
    where: Path,
    processes: int,
    saved_processes: int,
    ignore: Iterable[str] = (),
) -> None:
    """Refuse to continue (or to call finished) a run trained with other settings, naming the keys."""
    diff = config_differences(saved, resolved(cfg), ignore)
    if saved_processes != processes:
        diff.append(f"processes: {saved_processes} -> {processes}")
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise DuelistError(
            f"{where}: was trained with other settings ({shown}); run the same command again to resume it, "
            f"trainer.resume=never to start over in this run dir (overwrites it), or another hydra.run.dir"
        )


def check_same_data(state: SavedState, current: dict[str, str]) -> None:
    """Refuse to resume on other rows: a data file rewritten since the state was saved (the extra-data workflow
    of docs/extra-data.md regenerates its pseudo-labelled files) would train on other rows, and the saved best
    predictions would be paired with other validation rows. ``current``: :func:`duelist.data.splits.fingerprints`
    of the rows loaded now."""
    if not state.data:  # written before states recorded their data
        return
    changed = sorted(f for f in set(state.data) | set(current) if state.data.get(f) != current.get(f))
    if changed:
        more = f" (and {len(changed) - 1} more file(s))" if len(changed) > 1 else ""
        raise DuelistError(
            f"{changed[0]}: its rows are not the ones the training state {state.path} was trained on{more}; resuming "
            "would train on other rows: put the file back as it was, or start over with trainer.resume=never"
        )


def find_state(cfg: DictConfig, run: RunDir, processes: int, ignore: Iterable[str] = ()) -> SavedState | None:
    """The state ``trainer.resume`` asks for: ``auto`` the newest usable one in ``run`` (None when there is none: a
    fresh
    start), ``never`` None, or PATH (a state folder, or a run dir's newest usable state). Refuses a state trained with a
    different config; an unreadable state is skipped with a warning for the one before it."""
    how = cfg.trainer.resume
    if how == "never":
        return None
    if how == "auto":
        candidates = state_dirs(run)
        if not candidates:
            return None
        where = run.path
    else:
        path = Path(os.path.expanduser(how))
        candidates = (
            [path] if (path / "state.json").is_file() or STATE_NAME.match(path.name) else state_dirs(RunDir(path))
        )
        if not candidates:
            raise DuelistError(
                f"trainer.resume={how}: no saved training state there (a state is RUN/{STATES}/step-NNNNNNNN, "
                f"written every trainer.save_every steps); use trainer.resume=auto or never"
            )
        where = path
    for i, candidate in enumerate(candidates):
        try:
            state = load_state(candidate)
        except Exception as exc:  # damaged or half-copied: fall back to the state before it
            nxt = "the one before it" if i + 1 < len(candidates) else "none left"
            log.warning("%s: unreadable training state (%s: %s); %s", candidate, type(exc).__name__, exc, nxt)
            continue
        check_same_config(state.config, cfg, where, processes, state.processes, ignore)
        log.info("resuming from %s (step %d, epoch %d)", candidate, state.progress.step, state.progress.epoch)
        return state
    raise DuelistError(
        f"{where}: none of its {len(candidates)} saved training states can be read (see the warnings above); "
        f"trainer.resume=never starts over (overwrites the run dir)"
    )


def clean_states(run: RunDir, keep_up_to: Path | None) -> None:
    """Before training starts: remove half-written states (a process killed while saving leaves ``.step-*.tmp``), and
    every state of an abandoned attempt — those newer than ``keep_up_to`` (the state being resumed, when it is in this
    run dir), or all of them when training starts over or continues from a state elsewhere."""
    folder = run.path / STATES
    if not folder.is_dir():
        return
    for tmp in folder.glob(".step-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    own = keep_up_to is not None and keep_up_to.resolve().parent == folder.resolve()
    for state in state_dirs(run):
        if not own or state.name > keep_up_to.name:  # type: ignore[union-attr]
            shutil.rmtree(state, ignore_errors=True)


def remove_states(run: RunDir) -> None:
    """The run finished: its states are no longer needed (a 9B run's are gigabytes)."""
    shutil.rmtree(run.path / STATES, ignore_errors=True)
