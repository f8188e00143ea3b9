"""Build the small byte-level BPE tokenizer used by the tiny random-init models.

The result is committed under ``duelist/assets/tiny_tokenizer`` (so runs never rebuild it);
rebuild it with ``python -m duelist.tools.tiny_tokenizer``. Byte-level BPE covers every script
(CJK, Cyrillic, Arabic, ...) without unknown tokens. It carries a Gemma-style chat template
so the chat-template formatting path is exercised by ``model=tiny_gemma2``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ASSET_DIR = Path(__file__).parents[1] / "assets" / "tiny_tokenizer"
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else "
    "message['role'] }}\n"
    "{{ message['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build(out_dir: Path = ASSET_DIR, vocab_size: int = 2048) -> None:
    sample = Path(__file__).parents[1] / "assets" / "sample"
    texts: list[str] = []
    for file in sorted(sample.glob("*.parquet")):
        df = pd.read_parquet(file)
        for col in ("prompt", "response_a", "response_b"):
            texts.extend(df[col].astype(str).tolist())
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "model_max_length": 4096,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else ASSET_DIR)
    print(f"wrote {ASSET_DIR}")
