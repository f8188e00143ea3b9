"""Label unlabelled pairs with trained teachers and keep the rows worth learning from.

``python infer.py task=pseudolabel labeling=confident runs=[TEACHER,...] data.test=pairs.parquet
output=pl.parquet`` writes ``pl.parquet`` (canonical columns with ``p_a`` and ``winner`` set,
``pseudo_label=True``, ``teacher_agreement``, each teacher's ``p_a_teacher{i}``, ``round``),
``pl.summary.json`` (rows kept per language, label balance) and ``pl.png`` (the teachers' combined
probabilities with the kept rows marked). Add ``pl.parquet`` to ``data.train`` to train a student:
its rows train but never validate.

Selection, in order: confidence ``|p_a - 0.5| >= min_confidence``; ``require_agreement`` (every
teacher on the same side of 0.5); ``top_k_per_language`` (the most confident k per language).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from duelist.core import plots
from duelist.core.errors import DuelistError
from duelist.core.files import open_shard_folder, write_json, write_parquet
from duelist.core.hardware import pick_device
from duelist.core.progress import progress
from duelist.data.reading import load_test
from duelist.models.kinds import load_scorer
from duelist.predict import ensemble
from duelist.runs.registry import pick_runs
from duelist.runs.run_dir import RunDir

log = logging.getLogger(__name__)


def agreement(members: np.ndarray, combined: np.ndarray) -> np.ndarray:
    """Share of teachers (columns of ``members``) on the same side of 0.5 as the combined probability."""
    return ((members >= 0.5) == (combined >= 0.5)[:, None]).mean(axis=1)


def select(
    combined: np.ndarray,
    members: np.ndarray,
    languages: np.ndarray,
    min_confidence: float,
    require_agreement: bool,
    top_k_per_language: int | None,
) -> np.ndarray:
    """Boolean mask of the rows to keep (see the module docstring for the rules)."""
    confidence = np.abs(combined - 0.5)
    keep = confidence >= min_confidence
    if require_agreement:
        keep &= agreement(members, combined) == 1.0
    if top_k_per_language is not None:
        ranked = pd.DataFrame({"language": languages, "confidence": np.where(keep, confidence, -1.0)})
        rank = ranked.groupby("language")["confidence"].rank(method="first", ascending=False)
        keep &= rank.to_numpy() <= top_k_per_language
    return keep


def summary(rows_in: pd.DataFrame, kept: pd.DataFrame) -> dict[str, Any]:
    per_language = {}
    for language, n_in in rows_in["language"].value_counts().items():
        part = kept[kept["language"] == language]
        per_language[str(language)] = {
            "rows": int(n_in),
            "kept": len(part),
            "share_model_a": float((part["p_a"] >= 0.5).mean()) if len(part) else None,
        }
    return {
        "rows": len(rows_in),
        "kept": len(kept),
        "share_model_a": float((kept["p_a"] >= 0.5).mean()) if len(kept) else None,
        "mean_p_a": float(kept["p_a"].mean()) if len(kept) else None,
        "per_language": per_language,
    }


def teacher_scores(cfg: Any, teachers: list[Path], rows: pd.DataFrame, device: Any, folder: Path) -> np.ndarray:
    """Every teacher's P(A wins) for every row (one column per teacher), scored in shards of ``cfg.shard_rows`` rows
    written to ``folder`` as they finish: after a crash the same command scores only the missing shards (the folder
    remembers the rows, teachers and settings it belongs to and refuses another setup). Removed once used."""
    size = int(cfg.shard_rows)
    texts = rows[["id", "prompt", "response_a", "response_b"]].astype(str)
    setup = {
        "rows": hashlib.sha256(pd.util.hash_pandas_object(texts, index=False).to_numpy().tobytes()).hexdigest(),
        "teachers": [
            [str(t.resolve()), RunDir(t).checkpoint.stat().st_mtime_ns] for t in teachers
        ],  # a retrained teacher is another
        "shard_rows": size,
        "tta": cfg.labeling.tta,
        "precision": cfg.precision,
        "quantization": cfg.quantization,
    }
    open_shard_folder(
        folder, hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:16], "pseudo-labelling"
    )
    n_shards = max(1, -(-len(rows) // size))
    columns = []
    for t, run in enumerate(teachers):
        files = [folder / f"shard-{s:05d}.teacher{t}.parquet" for s in range(n_shards)]
        todo = [s for s, f in enumerate(files) if not f.is_file()]
        if len(todo) < n_shards:
            log.info("teacher %d (%s): %d of %d shards already scored", t, run.name, n_shards - len(todo), n_shards)
        if todo:
            scorer = load_scorer(run, cfg, device)
            for s in progress(todo, f"teacher {t}", "shards"):
                part = rows.iloc[s * size : (s + 1) * size]
                write_parquet(
                    files[s],
                    pd.DataFrame({"id": part["id"].to_numpy(), "p_a": scorer.score(part, tta=cfg.labeling.tta)}),
                )
            scorer.close()  # the next teacher gets the memory
        scored = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        assert scored["id"].tolist() == rows["id"].tolist()
        columns.append(scored["p_a"].to_numpy())
    return np.column_stack(columns)


def pseudolabel(cfg: Any) -> pd.DataFrame:
    """Score ``cfg.data.test`` with the teachers and write the selected, labelled rows to ``cfg.output``."""
    pl = cfg.labeling
    output = Path(cfg.output)
    teachers = pick_runs(cfg, members=list(pl.teachers), what="teachers")
    specialists = [str(t) for t in teachers if RunDir(t).specialty()]
    if specialists:
        raise DuelistError(
            f"teachers {', '.join(specialists)}: specialists (data.languages) label only their languages; "
            f"pseudo-label with generalist runs (a specialist's rows: filter the file by language first)"
        )
    rows = load_test(cfg.data.test)
    device = pick_device(cfg.device)
    log.info("pseudo-labelling %d rows with %d teacher(s) on %s, tta=%s", len(rows), len(teachers), device, pl.tta)
    members = teacher_scores(cfg, teachers, rows, device, output.with_suffix(".shards"))
    combined = ensemble.combine(members, ensemble.equal_weights(len(teachers))[ensemble.GLOBAL], pl.combine)
    keep = select(
        combined, members, rows["language"].to_numpy(), pl.min_confidence, pl.require_agreement, pl.top_k_per_language
    )

    out = rows.assign(
        p_a=combined,
        teacher_agreement=agreement(members, combined),
        pseudo_label=True,
        round=int(pl.round),
        pseudolabel=pl.name,
    )
    for i in range(members.shape[1]):
        out[f"p_a_teacher{i}"] = members[:, i]
    out["winner"] = np.where(combined >= 0.5, "model_a", "model_b")
    if pl.labels == "hard":
        out["p_a"] = (combined >= 0.5).astype(np.float64)
    kept = out[keep].reset_index(drop=True)
    if len(kept) == 0:
        raise DuelistError(
            f"{cfg.data.test}: no row passes the selection (min_confidence={pl.min_confidence}, "
            f"require_agreement={pl.require_agreement}); "
            "lower labeling.min_confidence"
        )
    report = {
        **summary(rows, kept),
        "teachers": [str(t) for t in teachers],
        "labeling": OmegaConf.to_container(pl, resolve=True),
    }
    plots.kept_histogram(
        output.with_suffix(".png"),
        combined,
        keep,
        (0.5 - pl.min_confidence, 0.5 + pl.min_confidence),
        "teachers' combined P(A wins)",
    )
    write_json(output.with_suffix(".summary.json"), report)
    write_parquet(output, kept)  # last: the labelled file appears only when everything else is written
    shutil.rmtree(output.with_suffix(".shards"), ignore_errors=True)
    print(
        f"pseudo-labels: kept {len(kept)} of {len(rows)} rows ({pl.labels} labels, share model_a "
        f"{report['share_model_a']:.3f}) -> {output}"
    )
    for language, part in report["per_language"].items():
        print(f"  {language:>12}: kept {part['kept']:>6} of {part['rows']:>6}")
    return kept
