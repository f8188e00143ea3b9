"""The GPU-only paths, run on a CPU: half precision through CPU autocast, and the bitsandbytes paths (QLoRA,
int8/nf4 scoring, 8-bit AdamW) behind the test-only switch DUELIST_CPU_BNB=1 (bitsandbytes has CPU kernels).
Each check compares with an independent computation: a fresh reload scored row by row, weights before and
after training, the model's own hidden states pooled by hand."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import bitsandbytes as bnb  # in the dev extra: CI runs these paths
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY, WSDM_EXAMPLE, compose_train
from duelist.core.errors import DuelistError
from duelist.core.hardware import autocast_dtype, half_weights
from duelist.data.encoding import PairEncoder
from duelist.data.reading import load_test
from duelist.data.splits import load_train_valid
from duelist.models.heads import PairHead
from duelist.models.network_build import build_model, load_checkpoint
from duelist.models.network_scoring import predict_p_a
from duelist.runs.run_dir import RunDir
from duelist.tasks.train import train

CPU = torch.device("cpu")
QLORA = [*TINY, "lora=qlora", "lora.r=8", "lora.dropout=0.0", "trainer.lr=1e-3"]


def n_4bit(model: torch.nn.Module) -> int:
    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def trainable_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters() if p.requires_grad}


def rescore(run: Path, quantization: str = "none", precision: str = "auto") -> tuple[np.ndarray, pd.DataFrame]:
    """A fresh reload of ``run`` scores its validation rows (in oof.parquet's order); returns p_a and the rows."""
    built, cfg = load_checkpoint(run, CPU, quantization=quantization)
    oof = RunDir(run).read_oof()
    _, valid = load_train_valid(cfg.data)
    valid = valid.set_index("id").loc[oof["id"]].reset_index()
    ids = PairEncoder.for_model(built.tokenizer, cfg.model).encode(valid, None)
    amp = autocast_dtype(precision, CPU, half_weights(built.model))
    batch = cfg.trainer.eval_batch_size  # the batches validation scored in (bench/qlora_kernels.py: other batches)
    return predict_p_a(built.model, PairHead(), ids, built.tokenizer.pad_token_id, batch, CPU, amp), valid


@pytest.fixture(scope="module")
def qlora_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """QLoRA runs trained on a CPU: a random-init tiny Gemma-2, the same architecture saved to disk and loaded as a
    pretrained base (the path a real 9B takes), and a random-init one with bf16 weights."""
    root = tmp_path_factory.mktemp("qlora")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DUELIST_CPU_BNB", "1")
        mp.setenv("DUELIST_CACHE_DIR", str(root / "cache"))
        base = compose_train([*TINY, "lora=none"])
        built = build_model(base.model, base.lora, CPU, seed=0)
        built.model.save_pretrained(root / "base")
        built.tokenizer.save_pretrained(root / "base")
        runs = {"random": root / "random", "pretrained": root / "pretrained", "bf16": root / "bf16"}
        train(compose_train(QLORA), runs["random"])
        train(
            compose_train([*QLORA, "model.dtype=bf16"]), runs["bf16"]
        )  # a bf16 base: its reload used to differ by ~1.5e-3
        train(
            compose_train([*QLORA, "model.init=pretrained", f"model.name_or_path={root / 'base'}"]), runs["pretrained"]
        )
    return runs


@pytest.fixture
def cpu_bnb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUELIST_CPU_BNB", "1")


@pytest.mark.fast
def test_explicit_precision_is_honoured_on_a_cpu_and_auto_follows_half_weights() -> None:
    assert autocast_dtype("bf16", CPU) is torch.bfloat16 and autocast_dtype("fp16", CPU) is torch.float16
    assert autocast_dtype("fp32", CPU) is None and autocast_dtype("auto", CPU) is None
    assert (
        autocast_dtype("auto", CPU, torch.bfloat16) is torch.bfloat16
    )  # a bf16 base with fp32 adapters needs autocast


@pytest.mark.parametrize("lora,dtype", [("default", "bf16"), ("none", "fp16")])
def test_every_trainable_parameter_is_fp32_over_a_half_precision_base(lora: str, dtype: str) -> None:
    cfg = compose_train([*TINY, f"lora={lora}", f"model.dtype={dtype}"])
    model = build_model(cfg.model, cfg.lora, CPU, seed=0).model
    assert trainable_dtypes(model) == {torch.float32}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == (
        {torch.bfloat16} if lora == "default" else set()
    )  # the base stays bf16; full fine-tuning trains every weight


@pytest.mark.parametrize("lora", ["none", "default"])
def test_fp16_weights_with_fp16_autocast_and_grad_scaler_train(tmp_path, lora: str) -> None:
    """The Kaggle T4 path (fp16 weights, fp16 autocast, GradScaler): it crashed with 'Attempting to unscale FP16
    gradients'."""
    train(
        compose_train([*TINY, f"lora={lora}", "model.dtype=fp16", "trainer.precision=fp16", "trainer.max_steps=2"]),
        tmp_path,
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train/autocast"] == "float16" and np.isfinite(metrics["val/log_loss"])


def test_bf16_training_keeps_updates_smaller_than_bf16_resolution(tmp_path) -> None:
    """lr 1e-5 on weights of std 0.02: each update is below bf16's spacing there (~8e-5); kept in bf16 most weights
    never move."""
    overrides = [
        *TINY,
        "lora=none",
        "model.dtype=bf16",
        "trainer.precision=bf16",
        "trainer.lr=1e-5",
        "trainer.head_lr=1e-5",
        "trainer.max_steps=3",
    ]
    cfg = compose_train(overrides)
    before = build_model(cfg.model, cfg.lora, CPU, seed=cfg.trainer.seed).model.state_dict()
    train(cfg, tmp_path)
    from safetensors.torch import load_file

    after = load_file(str(tmp_path / "checkpoint" / "model" / "model.safetensors"))
    weights = [k for k in after if k.endswith("proj.weight")]
    assert weights and all(after[k].dtype == torch.float32 for k in weights)
    changed = np.mean([(after[k] != before[k].float()).float().mean().item() for k in weights])
    assert changed > 0.95, f"only {changed:.1%} of the weights moved"


@pytest.mark.parametrize("kind", ["random", "pretrained", "bf16"])
def test_qlora_trains_on_4bit_layers_and_its_reload_reproduces_the_oof(qlora_runs, cpu_bnb, kind: str) -> None:
    cfg = RunDir(qlora_runs[kind]).read_checkpoint_config()
    built = build_model(cfg.model, cfg.lora, CPU, seed=0)  # what training built
    assert n_4bit(built.model) > 0 and trainable_dtypes(built.model) == {torch.float32}
    head = [n for n, p in built.model.named_parameters() if p.requires_grad and "score" in n]
    assert head, "the classification head is trained"
    p_a, _ = rescore(qlora_runs[kind])
    # in validation's batches, through the plain 4-bit path, the reload computes what validation did: 0 difference
    # under every CPU kernel setting bench/qlora_kernels.py reaches (AMX, AVX-512 with and without bf16, AVX2)
    np.testing.assert_allclose(p_a, RunDir(qlora_runs[kind]).read_oof()["p_a"].to_numpy(), atol=1e-6)
    reloaded, _ = load_checkpoint(qlora_runs[kind], CPU)
    assert n_4bit(reloaded.model) == n_4bit(built.model)


@pytest.mark.parametrize("kind", ["random", "bf16"])
def test_a_4bit_layer_scores_as_it_trains_on_any_cpu(qlora_runs, cpu_bnb, kind: str) -> None:
    """On a CPU with AVX-512 BF16, bitsandbytes repacks a 4-bit layer the first time it runs without gradients and
    computes it in bf16 with bf16 block scales from then on, whatever its compute dtype: the validation pass (and the
    reload) scored another function than training and the merged export, and a QLoRA reload differed from one CPU to
    the next (a reward run's merged export moved p_a by 0.0095 on this machine's kind). duelist keeps the plain path:
    in eval mode, without gradients, a 4-bit layer gives dequantize(W) x in its compute dtype, nothing repacked."""
    built, _ = load_checkpoint(qlora_runs[kind], CPU)
    layers = [m for m in built.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not built.model.training
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in layers:
            compute = layer.compute_dtype or torch.float32
            weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(compute)
            x = torch.randn(7, layer.in_features, generator=generator).to(compute)
            expected = torch.nn.functional.linear(x, weight, None if layer.bias is None else layer.bias.to(compute))
            for _ in range(2):  # bitsandbytes repacked at the first call and used its bf16 kernel from the second
                torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
            assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)


def test_qlora_gradient_checkpointing_stays_non_reentrant(cpu_bnb) -> None:
    cfg = compose_train(QLORA)
    model = build_model(cfg.model, cfg.lora, CPU, seed=0, gradient_checkpointing=True).model
    funcs = [m._gradient_checkpointing_func for m in model.modules() if hasattr(m, "_gradient_checkpointing_func")]
    assert funcs and all(isinstance(f, functools.partial) and f.keywords.get("use_reentrant") is False for f in funcs)


def test_export_of_a_qlora_run_matches_the_adapter_and_rescores_the_oof(qlora_runs, tmp_path) -> None:
    from duelist.core.metrics import predicted_winner
    from duelist.tools.export import export_run

    run, merged = qlora_runs["random"], tmp_path / "merged"
    export_run(run, merged)  # no DUELIST_CPU_BNB: merging reproduces the 4-bit rounding on any device
    adapter_p = RunDir(run).read_oof()["p_a"].to_numpy()  # the adapter model's p_a (its reload equals it: test above)
    merged_p, valid = rescore(merged)
    # fp32 compute on both sides: 7e-8 to 9e-8 under every CPU kernel setting bench/qlora_kernels.py reaches; 1.6e-3
    # when bitsandbytes scored the 4-bit layers in bf16 (CPUs with AVX-512 BF16)
    assert np.abs(merged_p - adapter_p).max() <= 1e-5
    oof = RunDir(merged).read_oof()
    np.testing.assert_allclose(oof["p_a"].to_numpy(), merged_p, atol=1e-6)  # the OOF describes the merged model
    metrics = RunDir(merged).read_metrics()
    hard = valid["winner"].isin(["model_a", "model_b"]).to_numpy()
    accuracy = float((predicted_winner(merged_p)[hard] == valid["winner"].to_numpy()[hard]).mean())
    assert metrics["val/accuracy"] == pytest.approx(accuracy) and metrics["export/max_abs_diff_p_a"] <= 1e-5
    config = json.loads((merged / "checkpoint" / "model" / "config.json").read_text())
    assert "quantization_config" not in config  # plain weights: a reload must not "re-quantize" them
    assert (
        config["attn_logit_softcapping"] is None and config["final_logit_softcapping"] is None
    )  # vLLM reads softcapping from here
    assert RunDir(merged).exported_from() == str(run)


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_quantized_scoring_stays_close_to_full_precision(qlora_runs, tmp_path, cpu_bnb, kind: str) -> None:
    from duelist.tools.export import export_run

    merged = tmp_path / "merged"
    export_run(qlora_runs["pretrained"], merged)
    full, _ = rescore(merged)
    quantized, _ = rescore(merged, quantization=kind)
    built, _ = load_checkpoint(merged, CPU, quantization=kind)
    assert any(isinstance(m, (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)) for m in built.model.modules())
    # stated bounds, measured on this 64-wide random model (4-bit rounding moves its logits more than a 9B's):
    # int8 max 2e-3; nf4 max 0.069, mean 0.03 (the merged weights are rounded to 4 bit again)
    diff = np.abs(quantized - full)
    print(f"{kind}: max |dp_a| {diff.max():.4f}, mean {diff.mean():.4f}")
    assert diff.max() < {"int8": 0.01, "nf4": 0.1}[kind] and diff.mean() < {"int8": 0.005, "nf4": 0.05}[kind]


def test_quantization_without_a_gpu_is_refused_unless_switched_on(qlora_runs, monkeypatch) -> None:
    monkeypatch.delenv("DUELIST_CPU_BNB", raising=False)
    with pytest.raises(DuelistError, match="needs a CUDA GPU"):
        load_checkpoint(qlora_runs["random"], CPU)
    with pytest.raises(DuelistError, match="lora.qlora=true needs a CUDA GPU"):
        cfg = compose_train(QLORA)
        build_model(cfg.model, cfg.lora, CPU, seed=0)


def test_adamw_8bit_trains(tmp_path, cpu_bnb) -> None:
    cfg = compose_train([*TINY, "lora=none", "trainer.optimizer=adamw_8bit", "trainer.max_steps=2"])
    before = build_model(cfg.model, cfg.lora, CPU, seed=cfg.trainer.seed).model.state_dict()
    train(cfg, tmp_path)
    from safetensors.torch import load_file

    after = load_file(str(tmp_path / "checkpoint" / "model" / "model.safetensors"))
    moved = [k for k in after if k.endswith("proj.weight") and not torch.equal(after[k], before[k])]
    assert moved and np.isfinite(json.loads((tmp_path / "metrics.json").read_text())["val/log_loss"])


def test_a_data_parallel_worker_loads_quantized_weights_onto_its_own_gpu(qlora_runs, tmp_path, monkeypatch) -> None:
    """Without a GPU: record where the 4-bit load would place the model for the worker of cuda:1."""
    from transformers import AutoModelForSequenceClassification

    from duelist.tools.export import export_run

    merged = tmp_path / "merged"
    export_run(qlora_runs["random"], merged)
    placed = []

    class Stop(Exception):
        pass

    def record(*args, **kwargs):
        placed.append(kwargs.get("device_map"))
        raise Stop

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", record)
    for index in (0, 1):
        with pytest.raises(Stop):
            load_checkpoint(merged, torch.device("cuda", index), quantization="nf4")
    assert placed == [{"": 0}, {"": 1}]


def test_vllm_refuses_a_gemma2_run_on_a_gpu_without_bf16(tmp_path, monkeypatch) -> None:
    from omegaconf import OmegaConf

    from duelist.models.network_scoring import VllmScorer

    run = tmp_path / "run"
    (run / "checkpoint" / "model").mkdir(parents=True)
    # weights in model.dtype=auto, as the 9B model files have them: fp16 on a GPU without bf16 (the HF backend's choice)
    for model, refused in (("tiny_gemma2", True), ("tiny_qwen2", False)):
        OmegaConf.save(compose_train([f"model={model}", "model.dtype=auto"]), run / "checkpoint" / "config.yaml")
        infer_cfg = OmegaConf.create({"precision": "auto", "cache_dir": None, "cpu_kv_cache_gb": 2})
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a T4: CUDA without bf16
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
        with pytest.raises(DuelistError) as err:
            VllmScorer(run, infer_cfg)
        assert ("refuses float16 for Gemma-2" in str(err.value)) == refused, str(err.value)
        if refused:
            assert "backend=hf" in str(err.value) and "this GPU has no bf16" in str(err.value)


@pytest.mark.fast
def test_a_closed_vllm_engine_is_shut_down_once_and_the_process_leaves_after_the_rest(monkeypatch) -> None:
    """A scorer or generator that closes its vLLM engine frees it at once (the next run gets the memory); the job's
    end shuts down the engines still running, then leaves with exit code 0 before the interpreter's teardown."""
    import os
    from types import SimpleNamespace

    from duelist.core import hardware

    stopped: list[str] = []

    def engine(name: str) -> SimpleNamespace:
        return SimpleNamespace(
            llm_engine=SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: stopped.append(name)))
        )

    left: list[int] = []
    monkeypatch.setattr(hardware, "_VLLM", {"running": [], "ran": False})
    monkeypatch.setattr(os, "_exit", left.append)
    hardware.leave_after_vllm()
    assert left == []  # a job that started no engine ends as any other
    first = hardware.vllm_started(engine("first"))
    hardware.vllm_started(engine("second"))
    hardware.shut_down_vllm(first)
    hardware.shut_down_vllm(first)
    assert stopped == ["first"] and left == []
    hardware.leave_after_vllm()
    assert stopped == ["first", "second"] and left == [0]


@pytest.mark.parametrize("model", ["tiny_gemma2", "tiny_qwen2", "tiny_llama"])
def test_sequences_end_in_a_real_token_so_hf_and_vllm_pool_the_same_position(model: str) -> None:
    """HF pools the rightmost non-pad token, vLLM the last one: compare HF's padded-batch logits with the head applied
    by hand to each unpadded sequence's last hidden state."""
    from duelist.core.batching import pad

    cfg = compose_train([*TINY, f"model={model}", "lora=none"])
    built = build_model(cfg.model, cfg.lora, CPU, seed=0)
    model_, tok = built.model.eval(), built.tokenizer
    rows = pd.concat(
        [
            load_test(str(WSDM_EXAMPLE)),
            pd.DataFrame({"prompt": ["Hi?", ""], "response_a": ["Hello.", ""], "response_b": ["", "Yes " * 20]}),
        ]
    )
    ids = PairEncoder.for_model(tok, cfg.model).encode(rows, None)
    assert all(seq[-1] != tok.pad_token_id for seq in ids)
    batch, mask = pad(ids, tok.pad_token_id)
    with torch.no_grad():
        hf = model_(input_ids=batch, attention_mask=mask).logits
        by_hand = torch.stack(
            [model_.score(model_.model(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]) for seq in ids]
        )
    assert len({len(s) for s in ids}) > 1  # the batch really is padded
    torch.testing.assert_close(hf, by_hand, atol=1e-5, rtol=1e-4)


def test_a_template_ending_in_the_pad_token_is_refused() -> None:
    from duelist.models.network_build import load_tokenizer

    cfg = compose_train(["model=tiny_gemma2"]).model
    tok = load_tokenizer(cfg.name_or_path)
    last = PairEncoder.for_model(tok, cfg).encode_one("p", "a", "b")[-1]
    tok.pad_token_id = last
    with pytest.raises(DuelistError, match="ends in its pad token"):
        PairEncoder.for_model(tok, cfg)


def test_kaggle_package_ships_bitsandbytes_when_it_needs_it(qlora_runs, tmp_path) -> None:
    from duelist.tools.kaggle import needed_packages, requirements

    run = str(qlora_runs["random"])
    assert "bitsandbytes" in needed_packages([run], merge=False, quantization="none")  # a 4-bit base loads with it
    assert "bitsandbytes" not in needed_packages([run], merge=True, quantization="none")  # merged: plain weights
    assert "bitsandbytes" in needed_packages([run], merge=True, quantization="int8")
    assert "bitsandbytes" in requirements(extras=["qlora"]) and "bitsandbytes" not in requirements()


@pytest.mark.parametrize(
    "setting",
    [["lora=qlora"], ["lora=default", "model.dtype=float16", "trainer.precision=fp16"]],
    ids=["qlora", "fp16"],
)
def test_killed_run_resumes_identically_on_4bit_and_fp16_paths(tmp_path, setting, cpu_bnb) -> None:
    """Resume on the GPU recipes' paths: adapters over a 4-bit base (only they are saved and reloaded), and fp16
    autocast whose GradScaler state (scale, growth tracker) is part of the saved state."""
    from test_resume import same_results

    from conftest import run_cli

    args = [
        "model=tiny_gemma2",
        *setting,
        "logger=none",
        "data.max_rows=60",
        "trainer.max_steps=4",
        "trainer.batch_size=8",
        "trainer.save_every=2",
        "trainer.eval_batch_size=32",
    ]
    env = {"DUELIST_CPU_BNB": "1"}
    train(compose_train(args), tmp_path / "ref")  # the uninterrupted run, in this process (cpu_bnb: the same switch)
    dead = run_cli(
        "train.py", [*args, f"hydra.run.dir={tmp_path / 'run'}"], env={**env, "DUELIST_TEST_KILL_AT_BATCH": "3"}
    )
    assert dead.returncode == -9 and [p.name for p in (tmp_path / "run" / "states").iterdir()] == ["step-00000002"]
    res = run_cli("train.py", [*args, f"hydra.run.dir={tmp_path / 'run'}"], env=env)
    assert res.returncode == 0 and "step-00000002 (step 2, epoch 0)" in res.stdout, res.stderr[-2000:]
    same_results(tmp_path / "ref", tmp_path / "run")
