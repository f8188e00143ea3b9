"""Small example files to follow the README with, from the bundled real sample (see assets/sample/ATTRIBUTION.md):

    python -m duelist example-data [out=.] [reward_model=true] [generators=true]

writes ``train.parquet`` (labelled pairs, the WSDM train layout), ``test.parquet`` (other pairs, the WSDM test
layout: id, prompt, response_a, response_b) and ``extra_prompts.parquet`` (prompts only, for ``task=generate``);
``reward_model=true`` also writes ``tiny_qwen3_rm/``: a tiny random Qwen3 reward model (one output) as a downloaded
reward model looks (config.json, model.safetensors, a tokenizer with a Qwen-style chat template), for
``model=tiny_qwen3_rm`` (docs/reward-models.md). It judges nothing: its weights are random. ``generators=true`` writes
two tiny random causal LMs the same way (``tiny_qwen3_lm/``, ``tiny_llama_lm/``) for ``generate=tiny_folders``, which
vLLM can load too. Every tiny model has heads of 32 (vLLM's CPU attention takes 32 and up).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from duelist.core import options
from duelist.core.errors import exit_cleanly_on_user_error
from duelist.core.files import write_parquet
from duelist.core.logs import quiet_library_logs
from duelist.core.options import option
from duelist.data.pairs import normalized
from duelist.data.reading import load_pairs

SAMPLE = [
    f"pkg:duelist/assets/sample/{name}.parquet" for name in ("hh_rlhf_harmless_test", "pandalm_test", "oasst1_zh_rank")
]
TRAIN_COLUMNS = ["id", "prompt", "response_a", "response_b", "winner", "model_a", "model_b", "language"]
TEST_COLUMNS = ["id", "prompt", "response_a", "response_b"]


def write_examples(
    out: str | Path, n_train: int = 1500, n_test: int = 300, n_prompts: int = 40, seed: int = 0
) -> dict[str, Path]:
    """Disjoint random rows of the sample: ``n_train`` labelled pairs, ``n_test`` test pairs, ``n_prompts`` prompts that
    appear in neither."""
    out = Path(out)
    rows = load_pairs(SAMPLE, on_bad_rows="drop")
    rows = rows.iloc[np.random.default_rng(seed).permutation(len(rows))].reset_index(drop=True)
    train = rows.iloc[:n_train][TRAIN_COLUMNS]
    test = rows.iloc[n_train : n_train + n_test][TEST_COLUMNS]
    rest = rows.iloc[n_train + n_test :]
    used = set(
        normalized(pd.concat([train["prompt"], test["prompt"]]))
    )  # new prompts only: none is a validation prompt
    fresh = rest[~normalized(rest["prompt"]).isin(used) & ~normalized(rest["prompt"]).duplicated()]
    prompts = fresh.iloc[:n_prompts][["id", "prompt"]]
    files = {
        "train": out / "train.parquet",
        "test": out / "test.parquet",
        "extra_prompts": out / "extra_prompts.parquet",
    }
    for name, table in (("train", train), ("test", test), ("extra_prompts", prompts)):
        write_parquet(files[name], table.reset_index(drop=True))
    return files


QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# the tiny architecture of every tiny model written here: hidden 64 in two heads of 32 (vLLM's CPU attention takes
# heads of 32 and up, so vLLM serves these models too)
TINY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "max_position_embeddings": 1024,
}
# what a tiny model is for -> the transformers class its weights are saved as
TASKS = {"reward": "AutoModelForSequenceClassification", "lm": "AutoModelForCausalLM"}
GENERATORS = {
    "tiny_qwen3_lm": "qwen3",
    "tiny_llama_lm": "llama",
}  # example-data generators=true (conf/generate/tiny_folders)


def tiny_tokenizer() -> Any:
    """duelist's byte-level tokenizer with Qwen's ``<|im_start|>``/``<|im_end|>`` chat markers and template, and an
    ``<|endoftext|>`` pad token."""
    from transformers import AutoTokenizer

    from duelist.core.files import resolve_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_path("pkg:duelist/assets/tiny_tokenizer"))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.add_special_tokens({"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>"})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def write_tiny_model(out: str | Path, arch: str, task: str, seed: int = 0) -> Path:
    """A tiny model of ``arch`` (a Hugging Face model_type: qwen3, llama, qwen2, gemma2) with random weights, saved
    as a download looks: config.json and model.safetensors beside the tokenizer files (:func:`tiny_tokenizer`).
    ``task``: ``reward`` (a sequence classifier with one output, as a reward model is) or ``lm`` (a causal LM: a
    generator)."""
    import torch
    import transformers
    from transformers import AutoConfig

    from duelist.core.files import atomic_dir

    tokenizer = tiny_tokenizer()
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = AutoConfig.for_model(arch, vocab_size=len(tokenizer), num_labels=1, **ids, **TINY_SHAPE)
    torch.manual_seed(seed)
    model = getattr(transformers, TASKS[task]).from_config(config)
    score = getattr(model, "score", None)  # a sequence classifier's output layer; a causal LM has none
    if score is not None:
        with torch.no_grad():  # a reward model's head spreads its rewards over a few units, not 0.02
            score.weight.normal_(0.0, 1.0)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out)


def write_tiny_reward_model(out: str | Path, seed: int = 0) -> Path:
    """``tiny_qwen3_rm``: a Qwen3ForSequenceClassification with one output and random weights, as a reward model
    download looks."""
    return write_tiny_model(out, "qwen3", "reward", seed)


@dataclass
class ExampleDataOptions:
    out: str = option(".", "folder to write the files into")
    reward_model: bool = option(False, "also write tiny_qwen3_rm/: a tiny random Qwen3 reward model (one output)")
    generators: bool = option(
        False,
        f"also write {' and '.join(GENERATORS)}/: tiny random causal LMs saved as downloads (generate=tiny_folders)",
    )


@exit_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    quiet_library_logs()
    args = options.parse(ExampleDataOptions, argv, "python -m duelist example-data", __doc__.splitlines()[0])
    for name, path in write_examples(args.out).items():
        print(f"{name}: {path}")
    if args.reward_model:
        print(f"reward model: {write_tiny_reward_model(Path(args.out) / 'tiny_qwen3_rm')}")
    if args.generators:
        for seed, (name, arch) in enumerate(GENERATORS.items(), start=1):  # each its own random weights
            print(f"generator: {write_tiny_model(Path(args.out) / name, arch, 'lm', seed=seed)}")
