"""GPU paths: bf16 autocast training and 4-bit QLoRA. Skipped without CUDA (CI has none)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY, compose_train
from duelist.models.network_build import build_model, load_checkpoint
from duelist.tasks.train import train

pytestmark = pytest.mark.gpu


def test_bf16_training_on_gpu(tmp_path) -> None:
    cfg = compose_train([*TINY, "trainer.device=cuda"])
    train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["device"].startswith("cuda") and metrics["train/peak_gpu_memory_gb"] > 0
    built, _ = load_checkpoint(tmp_path, torch.device("cuda"))
    assert next(built.model.parameters()).is_cuda


def test_qlora_loads_4bit_and_trains(tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    # save a tiny random Gemma-2 as a "pretrained" folder, then load it through the QLoRA path
    cfg = compose_train([*TINY, "lora=none"])
    built = build_model(cfg.model, cfg.lora, torch.device("cpu"), seed=0)
    built.model.save_pretrained(tmp_path / "base")
    built.tokenizer.save_pretrained(tmp_path / "base")
    cfg = compose_train(
        [
            *TINY,
            "lora=qlora",
            "lora.r=8",
            "model.init=pretrained",
            f"model.name_or_path={tmp_path / 'base'}",
            "trainer.device=cuda",
        ]
    )
    train(cfg, tmp_path / "run")
    built, _ = load_checkpoint(tmp_path / "run", torch.device("cuda"))
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in built.model.modules())


def test_8bit_adamw_trains(tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    cfg = compose_train([*TINY, "trainer.device=cuda", "trainer.optimizer=adamw_8bit", "lora=none"])
    train(cfg, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["val/log_loss"] < 5


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_quantized_inference_close_to_16_bit(tmp_path, kind: str) -> None:
    pytest.importorskip("bitsandbytes")
    from conftest import WSDM_EXAMPLE
    from duelist.data.encoding import PairEncoder
    from duelist.data.reading import load_test
    from duelist.models.heads import PairHead
    from duelist.models.network_scoring import predict_p_a
    from duelist.tools.export import export_run

    train(compose_train([*TINY, "trainer.device=cuda"]), tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "merged")
    gpu = torch.device("cuda")
    rows = load_test(str(WSDM_EXAMPLE))
    out = {}
    for q in ("none", kind):
        built, cfg = load_checkpoint(tmp_path / "merged", gpu, quantization=q)
        ids = PairEncoder.for_model(built.tokenizer, cfg.model).encode(rows, None)
        out[q] = predict_p_a(built.model, PairHead(), ids, built.tokenizer.pad_token_id, 8, gpu, torch.float16)
    import bitsandbytes as bnb

    assert any(isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)) for m in built.model.modules())
    assert abs(out[kind] - out["none"]).max() < 0.05
