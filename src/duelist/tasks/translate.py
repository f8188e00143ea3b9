"""task=translate: a pair file in other languages, by an instruction-tuned LLM (a last lever for a scarce language).

``python infer.py task=translate generate=hf data.test=pairs.parquet output=translated.parquet
+translate.to=[Russian,Vietnamese]`` reads pairs in any supported layout (labels kept when the file has them), and for
every target language and every row not already in it asks the first model of ``generate.generators`` (through
``generate.backend``: transformers or vLLM, greedy decoding) to translate the prompt and both responses with
``translate.instruction``. Each distinct text is translated once; empty texts stay empty. A row is left out (counted in
the log) when one of its texts does not fit in ``generate.max_prompt_tokens`` with the instruction, or its translation
came back empty or stopped at ``translate.max_new_tokens``: a shortened answer under the original label would teach the
wrong thing. Output rows keep the label, winner and model names, get the target ``language``, ``translated=true``,
``source_id`` (the row they translate) and ``source_language``, and id ``<source id>@<language>``. Training reads them
like any extra data (``data.train=[..., translated.parquet]``): they train but never validate, and translations of a
validation row are dropped from training.

Work goes in shards under ``translated.shards/`` (``generate.shard_size`` rows per shard and language); the same
command after a crash translates only what is missing, and the folder refuses to mix another setup's shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from duelist.core.files import open_shard_folder, write_parquet
from duelist.core.hardware import pick_device
from duelist.core.languages import language_name
from duelist.core.progress import progress
from duelist.data.pairs import CANONICAL_COLUMNS, TEXT_COLUMNS, pair_keys, prompt_keys
from duelist.data.reading import canonicalize, read_table
from duelist.tasks.generate import chat_text, check_backend, make_backend

log = logging.getLogger(__name__)


def load_pairs_to_translate(path: str, on_bad_rows: str) -> pd.DataFrame:
    """The pairs of ``path`` in the canonical layout, labels kept when the file has them (ties too)."""
    raw = read_table(path)
    labelled = any(c in raw.columns and raw[c].notna().any() for c in ("winner", "p_a", "winner_model_a", "chosen"))
    return canonicalize(raw, path, labelled=labelled, ties="soft", on_bad_rows=on_bad_rows)


def fingerprint(pairs: pd.DataFrame, targets: list[str], cfg: Any) -> str:
    """What a shard folder belongs to: the rows, the target languages, the translating model and its settings."""
    g = cfg.generate
    settings = {
        "generator": OmegaConf.to_container(g.generators[0], resolve=True),
        "backend": str(g.backend),
        "dtype": str(g.dtype),
        "max_prompt_tokens": g.max_prompt_tokens,
        "shard_size": g.shard_size,
        "seed": g.seed,
        "translate": OmegaConf.to_container(cfg.translate, resolve=True),
    }
    texts = pd.util.hash_pandas_object(pairs[list(TEXT_COLUMNS)], index=False).to_numpy()
    blob = (
        json.dumps(
            {"ids": list(pairs["id"]), "targets": targets, "settings": settings}, sort_keys=True, default=str
        ).encode()
        + texts.tobytes()
    )
    return hashlib.sha256(blob).hexdigest()[:16]


PROBLEMS = {
    "too_long": "the instruction and a text do not fit in generate.max_prompt_tokens",
    "cut": "a translation stopped at translate.max_new_tokens (translate.keep_cut=true keeps such rows)",
    "empty": "a non-empty text came back empty",
}


def translate_rows(
    backend: Any, rows: pd.DataFrame, language: str, t: Any, max_prompt_tokens: int, seed: int
) -> pd.DataFrame:
    """``rows`` with prompt and responses translated into ``language`` (each distinct non-empty text once; empty texts
    stay empty), and ``problem``: None, or why the row cannot be used (:data:`PROBLEMS`): a text that does not fit
    with the instruction is not sent (cut from the front, the instruction would be lost), a translation cut at
    ``translate.max_new_tokens`` (unless ``translate.keep_cut``) or empty would change the pair its label judged."""
    texts = list(dict.fromkeys(x for c in TEXT_COLUMNS for x in rows[c] if x.strip()))
    asks = {x: t.instruction.replace("{language}", language).replace("{text}", x) for x in texts}
    fits = {
        x: len(backend.tokenizer(chat_text(backend.tokenizer, ask), add_special_tokens=False)["input_ids"])
        <= max_prompt_tokens
        for x, ask in asks.items()
    }
    sent = [x for x in texts if fits[x]]
    outputs = backend.generate([asks[x] for x in sent], [seed + j for j in range(len(sent))]) if sent else []
    done = dict(zip(sent, outputs))
    problem_of = {x: "too_long" for x in texts if not fits[x]}
    for x, cut in zip(sent, backend.at_limit if sent else []):
        if not done[x].strip():
            problem_of[x] = "empty"
        elif cut and not t.keep_cut:
            problem_of[x] = "cut"
    problems = [
        next((problem_of[x] for x in row if x in problem_of), None)
        for row in rows[list(TEXT_COLUMNS)].itertuples(index=False)
    ]
    return pd.DataFrame(
        {
            "id": rows["id"].to_numpy(),
            **{c: [done.get(x, x) for x in rows[c]] for c in TEXT_COLUMNS},
            "problem": problems,
        }
    )


def translate(cfg: Any) -> pd.DataFrame:
    """Translate ``cfg.data.test``'s pairs into every language of ``cfg.translate.to``; write ``cfg.output``."""
    t, g = cfg.translate, cfg.generate
    output = Path(cfg.output)
    targets = list(dict.fromkeys(language_name(x) for x in t.to))
    pairs = load_pairs_to_translate(cfg.data.test, cfg.data.on_bad_rows)
    pairs = pairs.assign(shard=np.arange(len(pairs)) // g.shard_size)
    n_shards = int(pairs["shard"].max()) + 1
    folder = output.with_suffix(".shards")
    check_backend(g)
    device = pick_device(cfg.device)
    open_shard_folder(folder, fingerprint(pairs, targets, cfg), "translation")

    def shard_file(shard: int, language: str) -> Path:
        return folder / f"shard-{shard:05d}.{language}.parquet"

    todo = [(s, lang) for lang in targets for s in range(n_shards) if not shard_file(s, lang).is_file()]
    log.info(
        "translating %d pairs into %s: %d shards of %d rows, %d already done",
        len(pairs),
        ", ".join(targets),
        n_shards * len(targets),
        g.shard_size,
        n_shards * len(targets) - len(todo),
    )
    if todo:
        gen = g.generators[0]
        backend = make_backend(
            gen, OmegaConf.merge(g, {"max_new_tokens": t.max_new_tokens, "temperature": 0.0}), device
        )
        log.info("translator: %s (%s backend, greedy)", gen.name, g.backend)
        for shard, language in progress(todo, "translate", "shards"):
            rows = pairs[(pairs["shard"] == shard) & (pairs["language"] != language)]
            write_parquet(
                shard_file(shard, language),
                translate_rows(backend, rows, language, t, g.max_prompt_tokens, g.seed + shard),
            )
        del backend

    parts, dropped = [], {}
    by_id = pairs.set_index("id")
    for language in targets:
        for shard in range(n_shards):
            done = pd.read_parquet(shard_file(shard, language))
            for problem, n in done["problem"].value_counts().items():
                dropped[problem] = dropped.get(problem, 0) + int(n)
            done = done[done["problem"].isna()]
            source = by_id.loc[done["id"]].reset_index()
            parts.append(
                source.assign(
                    **{c: done[c].to_numpy() for c in TEXT_COLUMNS},
                    id=[f"{i}@{language}" for i in done["id"]],
                    source_id=done["id"].to_numpy(),
                    source_pair=pair_keys(source).to_numpy(),  # keys of the texts it was made from: the leakage
                    source_prompt=prompt_keys(source["prompt"]).to_numpy(),  # guard finds them under any id
                    source_language=source["language"].to_numpy(),
                    language=language,
                    translated=True,
                    source=[f"translated:{s}" for s in source["source"]],
                )
            )
    columns = CANONICAL_COLUMNS + ["source_language"]
    result = pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)
    write_parquet(output, result)
    for problem, n in sorted(dropped.items()):
        log.warning("%d translated pairs left out: %s", n, PROBLEMS.get(problem, problem))
    counts = result["language"].value_counts().to_dict()
    print(
        f"translated {len(result)} pairs ({counts}) from {len(pairs)} -> {output}"
        + (f"; left out: {dropped}" if dropped else "")
    )
    return result
