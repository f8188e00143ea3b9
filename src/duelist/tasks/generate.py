"""Generate new response pairs for extra prompts with two or more generator models.

``python infer.py task=generate generate=hf data.test=prompts.parquet output=pairs.parquet`` reads
prompts (a ``prompt`` column, or any supported pair layout), drops repeated prompts, applies
``generate.max_prompts`` and ``generate.language_quota`` (seeded), gives each prompt two distinct
generators (seeded: which is A and which is B), and writes ``pairs.parquet`` in the canonical layout
with the generator names in ``model_a``/``model_b`` and no winner — ready for
``infer.py task=pseudolabel``.

Work is written in shards under ``pairs.shards/``: one file per (shard, generator), then one per
shard. Running the same command after a crash skips every finished part; the folder remembers
the setup it belongs to and refuses to mix shards of another one.

Backends behind one interface (``generate(texts) -> texts``): ``hf`` (transformers ``generate``,
prompts sorted by length into batches) and ``vllm`` (``LLM.generate``, optional extra, GPU only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from duelist.core.errors import DuelistError
from duelist.core.files import open_shard_folder, resolve_path, write_parquet
from duelist.core.hardware import (
    pick_device,
    require_vllm,
    shut_down_vllm,
    torch_dtype,
    vllm_dtype,
    vllm_engine_settings,
    vllm_on_cpu,
    vllm_started,
)
from duelist.core.languages import detect_languages, language_names
from duelist.core.progress import progress
from duelist.data.pairs import CANONICAL_COLUMNS, is_text, normalized
from duelist.data.reading import canonicalize, find_layout, read_table
from duelist.models.network_build import from_cache_only, load_tokenizer

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- prompts


def load_prompts(path: str, on_bad_rows: str) -> pd.DataFrame:
    """``id, prompt, language`` from a prompt-only file or any pair layout; one row per distinct prompt."""
    raw = read_table(path)
    if len(raw) == 0:
        raise DuelistError(f"{path}: the file has no rows")
    if find_layout(raw.columns) is not None:
        df = canonicalize(raw, path, labelled=False, ties="soft", on_bad_rows=on_bad_rows)
    elif "prompt" in raw.columns:
        df = pd.DataFrame(
            {
                "id": raw["id"].astype(str) if "id" in raw else [f"{Path(path).stem}-{i}" for i in range(len(raw))],
                "prompt": raw["prompt"],
                "language": language_names(raw["language"]) if "language" in raw else "unknown",
            }
        )
        bad = ~df["prompt"].map(is_text)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            if on_bad_rows == "fail":
                raise DuelistError(
                    f"{path}: row {i} (id={df['id'].iloc[i]}): column prompt is empty or not text; fix the file or set "
                    "data.on_bad_rows=drop"
                )
            log.warning("%s: dropped %d rows without a prompt text", path, int(bad.sum()))
            df = df[~bad]
        if "language" not in raw:  # named by the prompt's detected language (generate.language_quota applies to it)
            df["language"] = detect_languages(df["prompt"]).to_numpy()
    else:
        raise DuelistError(f"{path}: no 'prompt' column; give a file with prompt[, id, language] or any pair layout")
    df = df[["id", "prompt", "language"]].reset_index(drop=True)
    return df[~normalized(df["prompt"]).duplicated()].reset_index(drop=True)


def choose_prompts(df: pd.DataFrame, max_prompts: int | None, quota: dict[str, int], seed: int) -> pd.DataFrame:
    """A seeded shuffle, then at most ``quota[language]`` per language and ``max_prompts`` in all."""
    df = df.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    if quota:
        rank = df.groupby("language").cumcount()
        cap = df["language"].map(lambda lang: quota.get(lang, math.inf))
        df = df[rank < cap].reset_index(drop=True)
    if max_prompts is not None:
        df = df.iloc[:max_prompts].reset_index(drop=True)
    return df


def assign_pairs(n: int, n_generators: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """For each prompt two distinct generator indices (A, B), uniformly over ordered pairs, seeded."""
    if n_generators < 2:
        raise DuelistError("generate.generators: name at least two generator models (a pair needs two responses)")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n_generators, size=n)
    b = (a + rng.integers(1, n_generators, size=n)) % n_generators  # never equal to a
    return a, b


# ----------------------------------------------------------------------------- backends


class Backend(Protocol):
    """``generate`` returns one text per prompt, prompt i sampled with ``seeds[i]`` (where the backend can seed each
    prompt: vLLM; transformers seeds each batch with its first prompt's); afterwards ``at_limit[i]`` says whether text
    i stopped at ``max_new_tokens`` (cut) rather than at the end of its answer."""

    tokenizer: Any
    at_limit: list[bool]

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[str]: ...

    def close(self) -> None:
        """Free the model (a vLLM engine's process) before the next generator loads."""


def chat_text(tokenizer: Any, prompt: str) -> str:
    """The prompt as the generator's chat template renders a user turn (plain text if it has none)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


def prompt_ids(tokenizer: Any, prompt: str, max_tokens: int) -> list[int]:
    """The chat-formatted prompt's token ids; a long one keeps its end (the chat template's generation prompt comes
    last: cut from the right, the generator would continue the user's text instead of answering)."""
    return tokenizer(chat_text(tokenizer, prompt), add_special_tokens=False)["input_ids"][-max_tokens:]


class HFBackend:
    """transformers ``generate``: prompts sorted by length, left-padded batches of ``batch_size``."""

    def __init__(self, gen: Any, cfg: Any, device: torch.device):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.cfg, self.device = cfg, device
        self.tokenizer = load_tokenizer(gen.name_or_path)
        self.tokenizer.padding_side = "left"
        dtype = torch_dtype(cfg.dtype, device)
        if gen.init == "random":
            overrides = (
                OmegaConf.to_container(gen.config_overrides)
                if OmegaConf.is_config(gen.config_overrides)
                else dict(gen.config_overrides)
            )
            config = AutoConfig.for_model(
                gen.arch,
                vocab_size=len(self.tokenizer),
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                **overrides,
            )
            torch.manual_seed(cfg.seed)
            self.model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        elif gen.init == "pretrained":
            try:
                self.model = AutoModelForCausalLM.from_pretrained(
                    resolve_path(gen.name_or_path), dtype=dtype, local_files_only=from_cache_only(gen.name_or_path)
                )
            except Exception as err:
                raise DuelistError(
                    f"generator {gen.name}: cannot load {gen.name_or_path} ({str(err).splitlines()[0]}); pass a local "
                    "folder"
                ) from err
        else:
            raise DuelistError(f"generator {gen.name}: init={gen.init!r}; use pretrained or random")
        self.model.to(device).eval()

    def close(self) -> None:
        del self.model

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[str]:
        cfg, tok = self.cfg, self.tokenizer
        encoded = [prompt_ids(tok, p, cfg.max_prompt_tokens) for p in prompts]
        order = np.argsort([len(e) for e in encoded], kind="stable")  # similar lengths share a batch: little padding
        out: list[str] = [""] * len(prompts)
        self.at_limit = [False] * len(prompts)
        torch.manual_seed(int(seeds[0]) if len(seeds) else cfg.seed)
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            batch = tok.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt", padding=True)
            sampling = (
                dict(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
                if cfg.temperature > 0
                else dict(do_sample=False)
            )
            generated = self.model.generate(
                input_ids=batch["input_ids"].to(self.device),
                attention_mask=batch["attention_mask"].to(self.device),
                max_new_tokens=cfg.max_new_tokens,
                pad_token_id=tok.pad_token_id,
                **sampling,
            )
            new = generated[:, batch["input_ids"].shape[1] :]
            last = new[:, -1].tolist()
            for j, (i, text) in enumerate(zip(idx, tok.batch_decode(new, skip_special_tokens=True))):
                out[i] = text.strip()
                # finished sequences are padded after their end-of-sequence token; a cut one fills every new position
                self.at_limit[i] = new.shape[1] == cfg.max_new_tokens and last[j] not in (
                    tok.pad_token_id,
                    tok.eos_token_id,
                )
        return out


class VLLMBackend:
    """vLLM ``LLM.generate`` with the generator's chat template; vLLM schedules and batches by itself."""

    def __init__(self, gen: Any, cfg: Any, device: torch.device):
        from vllm import LLM  # check_backend() made sure it imports

        self.cfg = cfg
        on = torch.device("cpu") if vllm_on_cpu() else device
        dtype = vllm_dtype(cfg.dtype, cfg.dtype, on)
        log.info("generator %s: vllm on %s, weights in %s", gen.name, on.type, dtype)
        self.llm = vllm_started(
            LLM(
                model=resolve_path(gen.name_or_path),
                dtype=dtype,
                seed=cfg.seed,
                gpu_memory_utilization=cfg.gpu_memory_utilization,
                max_model_len=cfg.max_prompt_tokens + cfg.max_new_tokens,
                **vllm_engine_settings(cfg.cpu_kv_cache_gb),
            )
        )
        self.tokenizer = self.llm.get_tokenizer()

    def close(self) -> None:
        shut_down_vllm(self.llm)

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[str]:
        """Prompt i is sampled with its own seed ``seeds[i]``: the same prompt gives the same text on every run, and
        no two prompts share a random stream (one seed for every prompt gave a near-flat model the same text for
        different prompts). The text is the generated token ids decoded by the generator's tokenizer, as with
        transformers."""
        from vllm import SamplingParams

        cfg = self.cfg
        ids = [prompt_ids(self.tokenizer, p, cfg.max_prompt_tokens) for p in prompts]
        order = np.argsort([len(i) for i in ids], kind="stable")
        params = [
            SamplingParams(
                temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens, seed=int(seeds[i])
            )
            for i in order
        ]
        prompts_ids = [{"prompt_token_ids": ids[i]} for i in order]
        results = self.llm.generate(prompts_ids, params, use_tqdm=sys.stderr.isatty())  # bars: a terminal only
        out: list[str] = [""] * len(prompts)
        self.at_limit = [False] * len(prompts)
        for i, result in zip(order, results):
            out[i] = self.tokenizer.decode(result.outputs[0].token_ids, skip_special_tokens=True).strip()
            self.at_limit[i] = result.outputs[0].finish_reason == "length"
        return out


def check_backend(cfg: Any) -> None:
    """Stop before anything is written when the backend cannot run here (a failed check must not leave a shard folder
    that a later call with another backend would refuse as "a different setup")."""
    if cfg.backend != "vllm":
        return
    require_vllm("generate.backend=vllm", "generate=hf")
    for gen in cfg.generators:
        if gen.init != "pretrained":
            raise DuelistError(
                f"generator {gen.name}: the vllm backend loads pretrained weights only (init=pretrained)"
            )


def make_backend(gen: Any, cfg: Any, device: torch.device) -> Backend:
    if cfg.backend == "hf":
        return HFBackend(gen, cfg, device)
    return VLLMBackend(gen, cfg, device)


# ----------------------------------------------------------------------------- shards


def fingerprint(prompts: pd.DataFrame, cfg: Any) -> str:
    """What a shard folder belongs to: the chosen prompts and every setting that changes the output."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    for how in ("batch_size", "cpu_kv_cache_gb"):  # how it batches and what memory it takes change no text
        settings.pop(how, None)
    blob = json.dumps({"ids": list(prompts["id"]), "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def generate(cfg: Any) -> pd.DataFrame:
    """Generate the response pairs described by ``cfg.generate`` for the prompts in ``cfg.data.test``: each generator
    writes its responses shard by shard, each shard's parts are joined into pairs, the shards into ``cfg.output``."""
    g = cfg.generate
    prompts = planned_prompts(cfg)
    shards = Shards(Path(cfg.output).with_suffix(".shards"), [gen.name for gen in g.generators], prompts)
    check_backend(g)
    device = pick_device(cfg.device)
    open_shard_folder(shards.folder, fingerprint(prompts[["id"]], g), "generation")
    log.info(
        "generating responses for %d prompts in %d shards with %s (%s backend)",
        len(prompts),
        shards.count,
        ", ".join(shards.names),
        g.backend,
    )
    for k, gen in enumerate(g.generators):
        generate_parts(shards, k, gen, g, device)
    for shard in range(shards.count):
        shards.join(shard)
    return write_pairs(cfg, shards, len(prompts))


def planned_prompts(cfg: Any) -> pd.DataFrame:
    """The prompts to answer (``generate.max_prompts``, ``language_quota``), each with its two generators (``gen_a``,
    ``gen_b``: indices, seeded) and its shard."""
    g = cfg.generate
    prompts = choose_prompts(
        load_prompts(cfg.data.test, cfg.data.on_bad_rows), g.max_prompts, dict(g.language_quota), g.seed
    )
    a, b = assign_pairs(len(prompts), len(g.generators), g.seed)
    return prompts.assign(gen_a=a, gen_b=b, shard=np.arange(len(prompts)) // g.shard_size)


class Shards:
    """The work folder (``OUTPUT.shards/``): ``shard-N.GENERATOR.parquet`` holds one generator's responses of shard N,
    ``shard-N.parquet`` the shard's pairs once joined (its parts are then removed)."""

    def __init__(self, folder: Path, names: list[str], prompts: pd.DataFrame):
        self.folder, self.names, self.prompts = folder, names, prompts
        self.count = int(prompts["shard"].max()) + 1 if len(prompts) else 0

    def part(self, shard: int, gen: int) -> Path:
        return self.folder / f"shard-{shard:05d}.{self.names[gen]}.parquet"

    def joined(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}.parquet"

    def join(self, shard: int) -> None:
        """Shard ``shard``'s parts as pairs: each prompt with its A and B generators' responses."""
        if self.joined(shard).is_file():
            return
        rows = self.prompts[self.prompts["shard"] == shard]
        parts = {
            k: pd.read_parquet(self.part(shard, k)).set_index("id")["response"]
            for k in range(len(self.names))
            if self.part(shard, k).is_file()
        }
        pairs = pd.DataFrame(
            {
                "id": rows["id"].to_numpy(),
                "prompt": rows["prompt"].to_numpy(),
                "response_a": [parts[k][i] for k, i in zip(rows["gen_a"], rows["id"])],
                "response_b": [parts[k][i] for k, i in zip(rows["gen_b"], rows["id"])],
                "model_a": [self.names[k] for k in rows["gen_a"]],
                "model_b": [self.names[k] for k in rows["gen_b"]],
                "language": rows["language"].to_numpy(),
            }
        )
        write_parquet(self.joined(shard), pairs)
        for k in range(len(self.names)):
            self.part(shard, k).unlink(missing_ok=True)


def generate_parts(shards: Shards, k: int, gen: Any, g: Any, device: torch.device) -> None:
    """Generator ``k``'s responses to its prompts, shard by shard; shards already written (or joined) are skipped."""
    prompts = shards.prompts
    mine = prompts[(prompts["gen_a"] == k) | (prompts["gen_b"] == k)]
    todo = [s for s in range(shards.count) if not shards.part(s, k).is_file() and not shards.joined(s).is_file()]
    if not todo:
        log.info("%s: every shard already done", gen.name)
        return
    backend = make_backend(gen, g, device)
    for shard in progress(todo, f"generate {gen.name}", "shards"):
        rows = mine[mine["shard"] == shard]
        seeds = g.seed + k * len(prompts) + rows.index.to_numpy()  # one per prompt and generator, none shared
        texts = backend.generate(list(rows["prompt"]), seeds.tolist()) if len(rows) else []
        write_parquet(shards.part(shard, k), pd.DataFrame({"id": rows["id"].to_numpy(), "response": texts}))
    backend.close()  # the next generator gets the memory


def write_pairs(cfg: Any, shards: Shards, n_prompts: int) -> pd.DataFrame:
    """The joined shards as one canonical pair file, without the pairs that have an empty response."""
    g, output = cfg.generate, Path(cfg.output)
    joined = [pd.read_parquet(shards.joined(s)) for s in range(shards.count)]
    pairs = (
        pd.concat(joined, ignore_index=True)
        if joined
        else pd.DataFrame(columns=["id", "prompt", "response_a", "response_b", "model_a", "model_b", "language"])
    )
    empty = ~(pairs["response_a"].str.strip().ne("") & pairs["response_b"].str.strip().ne(""))
    if empty.any():
        log.warning("%d of %d pairs have an empty response and are left out", int(empty.sum()), len(pairs))
    pairs = pairs[~empty].reset_index(drop=True)
    pairs = pairs.assign(
        winner=None,
        source=f"generated:{g.name}",
        p_a=math.nan,
        pseudo_label=False,
        translated=False,
        source_id=None,  # new pairs of a prompt: made from no pair (a prompt's rows stay in one fold when split)
        source_pair=None,
        source_prompt=None,
    )[CANONICAL_COLUMNS]
    write_parquet(output, pairs)
    counts = pairs.groupby(["model_a", "model_b"]).size().to_dict()
    print(f"generated {len(pairs)} pairs from {n_prompts} prompts -> {output} (pairs per generator pair: {counts})")
    return pairs
