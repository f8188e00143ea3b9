"""``train(cfg, run_dir)``: one training run, CPU or GPU, from a composed config.

Writes into ``run_dir``: ``config.yaml`` (resolved), ``checkpoint/`` (best by
``optimized_metric``), ``oof.parquet`` (validation predictions of that checkpoint),
``metrics.json`` and two charts. Returns the optimised metric (what an Optuna sweep reads).
"""

from __future__ import annotations

import logging
import math
import os
import random
import resource
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from duelist import plots
from duelist.batching import pad, train_batches
from duelist.data import augment, load_train_valid
from duelist.distributed import (
    barrier,
    broadcast,
    full_state_dict,
    gather,
    init_distributed,
    optimizer_state,
    set_optimizer_state,
    wrap,
)
from duelist.errors import DuelistError
from duelist.formatting import PairEncoder
from duelist.metrics import compute_metrics, is_better
from duelist.modeling import (
    Built,
    build_model,
    check_model_config,
    cpu_bnb,
    half_weights,
    head_and_body_parameters,
    require_bitsandbytes,
    save_checkpoint,
)
from duelist.resume import (
    TrainingState,
    check_same_config,
    clean_states,
    find_state,
    load_state,
    remove_states,
    resolved,
    restore_best,
    rng_state,
    save_state,
    set_rng_state,
)
from duelist.rundir import RunDir
from duelist.scoring import autocast_dtype, predict_p_a, split_by_length
from duelist.tracking import NullTracker, make_tracker

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pair_losses(
    logits: torch.Tensor, p_a: torch.Tensor, kl: torch.Tensor | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """Per-row loss: cross-entropy with (soft) targets ``[p_a, 1 - p_a]``; rows where ``kl`` is true use
    distillation instead: ``T^2 * KL(teacher_T || student_T)`` with both distributions softened by
    ``temperature`` (the teacher's two-class logits are ``log p_a, log(1 - p_a)``)."""
    logits = logits.float()
    target = torch.stack([p_a, 1.0 - p_a], dim=-1)
    losses = -(target * torch.log_softmax(logits, dim=-1)).sum(-1)
    if kl is None or not bool(kl.any()):
        return losses
    t = float(temperature)
    teacher = torch.log_softmax(torch.log(target.clamp(1e-6, 1.0)) / t, dim=-1)
    student = torch.log_softmax(logits / t, dim=-1)
    distill = (teacher.exp() * (teacher - student)).sum(-1) * t * t
    return torch.where(kl, distill, losses)


def check_train_config(cfg: DictConfig) -> None:
    t = cfg.trainer
    if t.batch_size < 1 or t.grad_accum < 1 or t.eval_batch_size < 1:
        raise DuelistError("trainer.batch_size, trainer.grad_accum and trainer.eval_batch_size must be >= 1")
    if t.save_every < 0 or t.keep_states < 1:
        raise DuelistError(
            f"trainer.save_every={t.save_every}, trainer.keep_states={t.keep_states}: save_every must be >= 0 (0 = never), keep_states >= 1"
        )
    if cfg.augment.same_batch and not cfg.augment.swap:
        raise DuelistError("augment.same_batch=true needs augment.swap=true")
    if cfg.augment.same_batch and t.batch_size < 2:
        raise DuelistError("augment.same_batch=true needs trainer.batch_size >= 2 (a pair and its swap)")
    if t.optimizer == "adamw_8bit":
        if not (torch.cuda.is_available() and t.device != "cpu") and not cpu_bnb():
            raise DuelistError(
                "trainer.optimizer=adamw_8bit needs a CUDA GPU (bitsandbytes); on this machine use trainer.optimizer=adamw"
            )
        require_bitsandbytes("trainer.optimizer=adamw_8bit")
    if not cfg.pseudolabel.temperature > 0:
        raise DuelistError(f"pseudolabel.temperature={cfg.pseudolabel.temperature}: must be > 0")


def make_optimizer(name: str, groups: list[dict[str, Any]], weight_decay: float) -> torch.optim.Optimizer:
    """``adamw`` (torch) or ``adamw_8bit`` (bitsandbytes: optimizer state in 8 bit, about 75% less of it; CUDA only)."""
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=weight_decay)
    import bitsandbytes as bnb  # adamw_8bit

    return bnb.optim.AdamW8bit(groups, weight_decay=weight_decay)


class Trainer:
    """The loop: AdamW (separate head lr), warmup + cosine, grad accumulation, evals, best checkpoint."""

    def __init__(self, cfg: DictConfig, run_dir: RunDir):
        self.cfg = cfg
        self.run_dir = run_dir
        self.t = cfg.trainer
        self.metric = cfg.optimized_metric
        self.dist, self.device = init_distributed(self.t.device, self.t.strategy, self.t.dist_timeout_min)
        self.amp: torch.dtype | None = None  # set in fit(), from the precision and the model's weights
        self.train_curve: list[tuple[int, float]] = []
        self.evals: list[tuple[int, dict[str, Any]]] = []
        self.best: dict[str, Any] | None = None
        self.resumed: TrainingState | None = None  # set by train() when trainer.resume finds a state

    def fit(
        self,
        built: Built,
        train_rows: pd.DataFrame,
        train_ids: list[list[int]],
        valid: pd.DataFrame,
        valid_ids: list[list[int]],
        tracker: Any,
    ) -> None:
        t, model = self.t, built.model
        pad_id = built.tokenizer.pad_token_id
        half = half_weights(model)
        self.amp = autocast_dtype(t.precision, self.device, half)
        if self.amp is None and half is not None:
            raise DuelistError(
                f"trainer.precision={t.precision} with {str(half).removeprefix('torch.')} weights (model.dtype={self.cfg.model.dtype}): "
                f"the fp32 trainable parameters meet the half-precision base only under autocast; use trainer.precision=auto, bf16 or fp16"
            )
        rng = np.random.default_rng(t.seed)
        lengths = [len(s) for s in train_ids]
        units = train_rows["pair"].to_numpy() if self.cfg.augment.same_batch else np.arange(len(train_rows))
        world, rank = self.dist.world, self.dist.rank
        n_batches = (
            len(train_batches(lengths, units, t.batch_size, False, np.random.default_rng(0))) // world
        )  # per process
        steps_per_epoch = max(1, math.ceil(n_batches / t.grad_accum))
        total = t.max_steps if t.max_steps > 0 else max(1, math.ceil(steps_per_epoch * t.epochs))
        resumed = self.resumed
        if resumed is not None:  # the trainable weights as saved, on every process, before DDP/FSDP take the model
            missing = set(resumed.weights) - {n for n, p in model.named_parameters() if p.requires_grad}
            if missing:
                raise DuelistError(
                    f"{resumed.path}: holds weights this model does not train ({sorted(missing)[:3]}); trainer.resume=never starts over"
                )
            model.load_state_dict(resumed.weights, strict=False)
        # several processes: DDP replicas, or FSDP2 shards (in place, so the optimizer is built after it)
        forward = wrap(model, self.dist, self.device)
        head, body = head_and_body_parameters(model)
        groups = [g for g in ({"params": body, "lr": t.lr}, {"params": head, "lr": t.head_lr}) if g["params"]]
        opt = make_optimizer(t.optimizer, groups, t.weight_decay)
        from transformers import get_cosine_schedule_with_warmup

        sched = get_cosine_schedule_with_warmup(opt, int(t.warmup_ratio * total), total)
        targets = torch.tensor(train_rows["p_a"].to_numpy(), dtype=torch.float32)
        weights = torch.tensor(train_rows["weight"].to_numpy(), dtype=torch.float32)  # per-source loss weights
        # pseudo-labelled rows are learnt with pseudolabel.loss (kl: distillation at a temperature)
        distill = torch.tensor(train_rows["pseudo_label"].to_numpy(dtype=bool) & (self.cfg.pseudolabel.loss == "kl"))
        # fp16 (GPUs without bf16, e.g. T4) needs loss scaling; bf16 and fp32 do not
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        log.info(
            "training %d rows (%d optimizer steps, %d per epoch) on %s",
            len(train_rows),
            total,
            steps_per_epoch,
            self.device,
        )

        step, micro, running, tokens, epoch, position, batches, before = 0, 0, [], 0, 0, 0, None, 0.0
        if resumed is not None:
            set_optimizer_state(model, opt, resumed.optimizer)
            sched.load_state_dict(resumed.scheduler)
            scaler.load_state_dict(resumed.scaler)
            set_rng_state(resumed.rng[rank], rng)
            step, tokens, epoch, position, batches, before = (
                resumed.step,
                resumed.tokens,
                resumed.epoch,
                resumed.position,
                resumed.batches,
                resumed.elapsed_s,
            )
            micro = step * t.grad_accum  # states are saved between optimizer steps
            self.train_curve, self.evals, self.best = list(resumed.train_curve), list(resumed.evals), resumed.best
            self.resumed = resumed = None  # free the copies of the weights and optimizer state
        kill_at = int(
            os.environ.get("DUELIST_TEST_KILL_AT_BATCH", "0")
        )  # tests only: SIGKILL this process after that many batches
        model.train()
        start = time.perf_counter()
        bar = tqdm(
            total=total, initial=step, desc="train", unit="step", disable=not self.dist.main
        )  # one bar, not one per process
        while step < total:
            if batches is None:
                batches = train_batches(
                    lengths, units, t.batch_size, t.group_by_length, rng
                )  # the same list on every process
            mine = batches[rank : len(batches) // world * world : world]
            for idx in mine[position:]:
                ids, mask = pad([train_ids[i] for i in idx], pad_id)
                with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                    logits = forward(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                per_row = pair_losses(
                    logits, targets[idx].to(self.device), distill[idx].to(self.device), self.cfg.pseudolabel.temperature
                )
                loss = (per_row * weights[idx].to(self.device)).mean()
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss is {loss.item()} at step {step}; lower trainer.lr or check the data"
                    )
                scaler.scale(loss / t.grad_accum).backward()
                running.append(loss.item())
                tokens += int(mask.sum())
                micro += 1
                position += 1
                if micro == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                if micro % t.grad_accum:
                    continue
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], t.max_grad_norm)
                scale = scaler.get_scale()
                scaler.step(opt)  # fp16: skipped when the scaled gradients overflowed (then the scale shrinks)
                scaler.update()
                if not scaler.is_enabled() or scaler.get_scale() >= scale:
                    sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                mean_loss = float(np.mean(running))
                running = []
                self.train_curve.append((step, mean_loss))
                elapsed = before + time.perf_counter() - start
                tracker.log(
                    {
                        "train/loss": mean_loss,
                        "train/lr": sched.get_last_lr()[0],
                        "train/tokens_per_s": tokens / elapsed,
                        "train/epoch": epoch,
                    },
                    step,
                )
                bar.update(1)
                bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{tokens / elapsed:.0f}")
                if (t.eval_every > 0 and step % t.eval_every == 0 and step < total) or step == total:
                    # validation: every process takes part (DDP: each scores its share of the rows; FSDP: the whole
                    # fold, its forward pass gathers the sharded parameters); rank 0 alone writes
                    self.evaluate(built, valid, valid_ids, step, tracker, tokens / elapsed)
                    barrier(self.dist)
                if t.save_every > 0 and step % t.save_every == 0 and step < total:
                    self.save_state(
                        model,
                        opt,
                        sched,
                        scaler,
                        rng,
                        tracker,
                        step=step,
                        epoch=epoch,
                        position=position,
                        batches=batches,
                        tokens=tokens,
                        elapsed_s=elapsed,
                    )
                if step >= total:
                    break
            epoch += 1
            batches, position = None, 0
        bar.close()

    def save_state(
        self,
        model: torch.nn.Module,
        opt: torch.optim.Optimizer,
        sched: Any,
        scaler: torch.amp.GradScaler,
        rng: np.random.Generator,
        tracker: Any,
        **where: Any,
    ) -> None:
        """Write a resumable state (:mod:`duelist.resume`). Every process takes part: under FSDP the weights and the
        optimizer state are gathered, and each process's RNG states go to rank 0, which alone writes."""
        started = time.perf_counter()
        trainable = {
            n: p for n, p in model.named_parameters() if p.requires_grad
        }  # not state_dict(): a 4-bit base would be packed
        if self.dist.sharded:  # collective: the full weights of every shard, on rank 0
            weights = {k: v for k, v in full_state_dict(model).items() if k in trainable}
        else:
            weights = {k: p.detach() for k, p in trainable.items()}
        optimizer = optimizer_state(model, opt)
        rngs = gather(rng_state(rng), self.dist)
        if self.dist.main:
            state = TrainingState(
                path=self.run_dir.path,
                train_curve=list(self.train_curve),
                evals=list(self.evals),
                best=self.best,
                scheduler=sched.state_dict(),
                scaler=scaler.state_dict(),
                rng=rngs,
                wandb_id=tracker.run_id,
                config=resolved(self.cfg),
                processes=self.dist.world,
                weights=weights,
                optimizer=optimizer,
                **where,
            )
            path = save_state(self.run_dir, state, self.t.keep_states)
            log.info("saved training state %s (%.1f s)", path, time.perf_counter() - started)
        barrier(self.dist)

    def validation_p_a(self, built: Built, valid_ids: list[list[int]]) -> np.ndarray | None:
        """P(A wins) of every validation row on rank 0 (None elsewhere). Under DDP every process scores a share of the
        rows (dealt by length, :func:`~duelist.scoring.split_by_length`) and rank 0 gathers them, so validation takes
        1/world of the time instead of keeping the others waiting (NCCL's timeout would end the run)."""

        def score(seqs: list[list[int]]) -> np.ndarray:
            return predict_p_a(
                built.model,
                seqs,
                built.tokenizer.pad_token_id,
                self.t.eval_batch_size,
                self.device,
                self.amp,
                desc="validate",
            )

        if self.dist.world == 1 or self.dist.sharded:
            return score(valid_ids) if self.dist.main or self.dist.sharded else None
        shares = split_by_length([len(s) for s in valid_ids], self.dist.world)
        mine = shares[self.dist.rank]
        parts = gather((mine, score([valid_ids[i] for i in mine])), self.dist)
        if not self.dist.main:
            return None
        log.info(
            "validation: %d processes scored %s of %d rows",
            self.dist.world,
            " + ".join(str(len(rows)) for rows, _ in parts),
            len(valid_ids),
        )
        p_a = np.full(len(valid_ids), np.nan)
        for rows, values in parts:
            p_a[rows] = values
        return p_a

    def evaluate(
        self,
        built: Built,
        valid: pd.DataFrame,
        valid_ids: list[list[int]],
        step: int,
        tracker: Any,
        tokens_per_s: float,
    ) -> None:
        p_a = self.validation_p_a(built, valid_ids)
        if p_a is None:  # a DDP process other than rank 0: its share is with rank 0
            return
        metrics = compute_metrics(valid, p_a)
        self.evals.append((step, metrics))
        tracker.log(metrics, step)
        log.info("step %d: val/accuracy=%.4f val/log_loss=%.4f", step, metrics["val/accuracy"], metrics["val/log_loss"])
        better = is_better(
            metrics[self.metric], None if self.best is None else self.best["metrics"][self.metric], self.metric
        )
        if self.dist.sharded:  # every process evaluates: all follow rank 0's decision, so all join the gather below
            better = broadcast(better, self.dist)
        if better:
            self.best = {"step": step, "metrics": metrics, "p_a": p_a, "train/tokens_per_s": tokens_per_s}
            state = full_state_dict(built.model) if self.dist.sharded else None  # collective: every process takes part
            if self.dist.main:
                save_checkpoint(built, self.cfg, self.run_dir.checkpoint, state)


def start_point(cfg: DictConfig, run: RunDir, processes: int) -> tuple[dict[str, Any], TrainingState | None]:
    """Where training starts: ``{"finished": metric}`` (``trainer.resume=auto`` on a finished run with the same
    settings), ``{"state": path}`` (a saved state, also returned loaded) or ``{}`` (from scratch). The run dir is made consistent with it:
    states of an abandoned attempt (newer than the one resumed, or all when starting over), half-written states and a
    stale ``metrics.json`` are removed, so they can neither be resumed nor mark the run finished later."""
    if cfg.trainer.resume == "auto" and run.is_finished():
        check_same_config(resolved(run.read_config()), cfg, run.path, processes, processes)
        return {"finished": float(run.read_metrics()[cfg.optimized_metric])}, None
    state = find_state(cfg, run, processes)
    clean_states(run, keep_up_to=state.path if state is not None else None)
    run.metrics_file.unlink(missing_ok=True)
    return ({"state": str(state.path)} if state is not None else {}), state


def write_outputs(
    cfg: DictConfig,
    run: RunDir,
    valid: pd.DataFrame,
    p_a: np.ndarray,
    metrics: dict[str, Any],
    train_curve: list,
    evals: list,
    tracker: Any,
    step_name: str = "optimizer step",
) -> None:
    """What every finished run leaves besides its checkpoint: oof.parquet, history.json, the charts, the tracker's
    summary, and metrics.json last (its presence marks the run finished)."""
    oof = valid[["id", "winner", "language", "source", "fold"]].assign(p_a=p_a, target=valid["p_a"].to_numpy())
    oof = oof[["id", "p_a", "winner", "language", "fold", "source", "target"]]
    run.write_oof(oof)
    curves = {"train/loss": [list(point) for point in train_curve]}
    for key in ("val/accuracy", "val/log_loss"):
        curves[key] = [[step, m[key]] for step, m in evals]
    run.write_history(curves)
    plots.training_curves(run.path / "curves.png", train_curve, evals, cfg.optimized_metric, step_name)
    counts = valid["language"].value_counts().to_dict()
    plots.accuracy_bars(
        run.path / "accuracy_by_language.png",
        metrics["val/accuracy_by_language"],
        counts,
        "validation accuracy by language",
    )
    tracker.summary(metrics)
    tracker.bar("val/accuracy_by_language", metrics["val/accuracy_by_language"], "language", "accuracy")
    tracker.table(
        "val/by_language",
        pd.DataFrame(
            {
                "language": list(counts),
                "rows": list(counts.values()),
                "accuracy": [metrics["val/accuracy_by_language"].get(k) for k in counts],
            }
        ),
    )
    tracker.image("curves", str(run.path / "curves.png"))
    if cfg.logger.log_predictions:
        worst = oof.assign(error=(oof["p_a"] - oof["target"]).abs()).nlargest(cfg.logger.log_predictions, "error")
        worst = worst.merge(valid[["id", "prompt", "response_a", "response_b"]], on="id")
        tracker.table("val/worst_predictions", worst)
    run.write_metrics(metrics)  # last: its presence marks a finished run


def report(cfg: DictConfig, run: RunDir, metrics: dict[str, Any]) -> float:
    value = float(metrics[cfg.optimized_metric])
    print(
        f"{cfg.optimized_metric}={value:.4f} (val/accuracy={metrics['val/accuracy']:.4f}, "
        f"longer-wins baseline={metrics['val/baseline_longer_wins']:.4f}, val/log_loss={metrics['val/log_loss']:.4f}); run dir: {run.path}"
    )
    return value


def train_feature_model(cfg: DictConfig, run: RunDir) -> float:
    """``model=features``: LightGBM on the hand-made features of :mod:`duelist.features` (``model.trees``), its curves
    recorded on the validation fold; the same run dir as a network's (``checkpoint/`` holds the booster as text)."""
    from duelist.feature_model import FeatureModel, check_trees
    from duelist.files import atomic_dir

    check_trees(cfg.model.trees, "model.trees")
    log.info(
        "model=features: LightGBM; lora, pseudolabel.loss and the trainer's optimisation settings do not apply (trainer.seed does)"
    )
    started = time.perf_counter()
    if cfg.trainer.resume == "auto" and run.is_finished():
        check_same_config(resolved(run.read_config()), cfg, run.path, 1, 1)
        value = float(run.read_metrics()[cfg.optimized_metric])
        log.info(
            "%s: already finished (%s=%.4f); trainer.resume=never trains it again",
            run.path,
            cfg.optimized_metric,
            value,
        )
        return value
    run.metrics_file.unlink(missing_ok=True)
    train_df, valid = load_train_valid(cfg.data)
    x, x_swapped = FeatureModel.features(train_df)
    target, weight = train_df["p_a"].to_numpy(dtype=float), train_df["weight"].to_numpy(dtype=float)
    if cfg.augment.swap:  # every pair in both orders, label flipped
        x, target, weight = (
            pd.concat([x, x_swapped], ignore_index=True),
            np.concatenate([target, 1.0 - target]),
            np.concatenate([weight, weight]),
        )
    x_valid, _ = FeatureModel.features(valid)
    log.info(
        "feature model: train %d rows (%d with swaps), valid %d rows, %d features",
        len(train_df),
        len(x),
        len(valid),
        x.shape[1],
    )
    baseline = compute_metrics(valid, np.full(len(valid), 0.5))["val/baseline_longer_wins"]
    hard = valid["winner"].isin(["model_a", "model_b"]).to_numpy()
    truth = valid["winner"].to_numpy()[hard]

    def evaluate(p_a: np.ndarray) -> dict[str, float]:
        return {"val/accuracy": float(np.mean(np.where(p_a[hard] >= 0.5, "model_a", "model_b") == truth))}

    model, curves = FeatureModel.fit(
        x,
        target,
        weight,
        cfg.model.trees,
        cfg.trainer.seed,
        valid=(x_valid, valid["p_a"].to_numpy(dtype=float)),
        evaluate=evaluate,
    )
    p_a = model.predict(x_valid)
    n_trees = model.booster.num_trees()
    metrics = {
        **compute_metrics(valid, p_a),
        "best_step": n_trees,
        "optimized_metric": cfg.optimized_metric,
        "train/rows": len(x),
        "train/trees": n_trees,
        "train/features": len(model.columns),
        "train/top_features": [
            [name, gain] for name, gain in list(model.importance().items())[:10]
        ],  # total split gain
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "runtime_s": time.perf_counter() - started,
        "device": "cpu",
        "processes": 1,
    }
    run.write_config(cfg)
    with atomic_dir(run.checkpoint) as tmp:
        OmegaConf.save(cfg, tmp / "config.yaml", resolve=True)
        model.save(tmp)
    accuracy = dict(curves.get("val/accuracy", []))
    evals = [
        (
            step,
            {
                "val/accuracy": accuracy.get(step, float("nan")),
                "val/log_loss": value,
                "val/baseline_longer_wins": baseline,
            },
        )
        for step, value in curves.get("val/log_loss", [])
    ]
    plots.importance_bars(
        run.path / "feature_importance.png", model.importance(), "feature model: total gain of each feature's splits"
    )
    tags = [f"model={cfg.model.name}", f"data={cfg.data.name}", "features"]
    tracker = make_tracker(
        cfg.logger, str(run.path), OmegaConf.to_container(cfg, resolve=True), name=run.path.name, tags=tags
    )
    try:
        for step, m in evals:
            tracker.log({k: v for k, v in m.items() if k != "val/baseline_longer_wins"}, step)
        write_outputs(cfg, run, valid, p_a, metrics, curves["train/loss"], evals, tracker, "boosting round")
        tracker.image("feature_importance", str(run.path / "feature_importance.png"))
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish(exit_code=0)
    return report(cfg, run, metrics)


def train(cfg: DictConfig, run_dir: str | Path) -> float:
    """Train one model as configured; returns ``cfg.optimized_metric`` of the best checkpoint."""
    run = RunDir(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    if cfg.model.arch == "features":
        return train_feature_model(cfg, run)
    check_train_config(cfg)
    seed_everything(cfg.trainer.seed)
    started = time.perf_counter()

    trainer = Trainer(cfg, run)
    if not trainer.dist.main:
        logging.getLogger().setLevel(logging.WARNING)  # one copy of every info line (rank 0's); warnings still show
    if trainer.dist.sharded and cfg.lora.enabled and cfg.lora.qlora:
        raise DuelistError(
            "trainer.strategy=fsdp cannot shard 4-bit QLoRA weights: launch with --multi_gpu (DDP) or use lora=default / lora=none"
        )
    check_model_config(cfg.model, cfg.lora, trainer.device)  # before any data is read
    # rank 0 alone decides where training starts (finished, a state, or from scratch) and tells the others, so every
    # process runs the same steps; an error there stops every process with the same line
    decision: dict[str, Any] = {}
    if trainer.dist.main:
        try:
            decision, trainer.resumed = start_point(cfg, run, trainer.dist.world)
        except DuelistError as err:
            decision = {"error": str(err)}
    decision = broadcast(decision, trainer.dist)
    if "error" in decision:
        raise DuelistError(decision["error"])
    if "finished" in decision:  # the same command again after the run ended: nothing to do
        log.info(
            "%s: already finished (%s=%.4f); trainer.resume=never trains it again",
            run.path,
            cfg.optimized_metric,
            decision["finished"],
        )
        return decision["finished"] if trainer.dist.main else float("nan")
    if decision.get("state") and not trainer.dist.main:
        trainer.resumed = load_state(Path(decision["state"]))
    train_df, valid = load_train_valid(cfg.data)
    built = build_model(cfg.model, cfg.lora, trainer.device, cfg.trainer.seed, cfg.trainer.gradient_checkpointing)
    encoder = PairEncoder.for_model(built.tokenizer, cfg.model)
    train_rows = augment(train_df, cfg.augment.swap, cfg.augment.same_batch)
    train_ids = encoder.encode(train_rows, cfg.cache_dir, desc="tokenize train")
    valid_ids = encoder.encode(valid, cfg.cache_dir, desc="tokenize valid")
    n_trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    log.info(
        "train %d rows (%d after augmentation), valid %d rows; %d trainable parameters",
        len(train_df),
        len(train_rows),
        len(valid),
        n_trainable,
    )

    if not trainer.dist.main:
        trainer.fit(built, train_rows, train_ids, valid, valid_ids, NullTracker())
        return float("nan")  # rank 0 writes the run dir and reports the metric
    config = OmegaConf.to_container(cfg, resolve=True)
    run.write_config(cfg)
    if trainer.resumed is not None:
        restore_best(trainer.resumed, run)  # the best checkpoint as of the state
    tags = [f"model={cfg.model.name}", f"data={cfg.data.name}", "lora" if cfg.lora.enabled else "full-fine-tuning"]
    wandb_id = trainer.resumed.wandb_id if trainer.resumed is not None else None  # a resumed run continues its W&B run
    tracker = make_tracker(cfg.logger, str(run.path), config, name=run.path.name, tags=tags, run_id=wandb_id)
    try:
        trainer.fit(built, train_rows, train_ids, valid, valid_ids, tracker)
        best = trainer.best
        assert best is not None  # fit always evaluates at the last step
        metrics = {
            **best["metrics"],
            "best_step": best["step"],
            "optimized_metric": cfg.optimized_metric,
            "train/rows": len(train_rows),
            "train/trainable_parameters": n_trainable,
            "train/tokens_per_s": best["train/tokens_per_s"],
            "train/peak_gpu_memory_gb": torch.cuda.max_memory_allocated(trainer.device) / 1e9
            if trainer.device.type == "cuda"
            else None,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # Linux reports KiB
            "runtime_s": time.perf_counter() - started,
            "device": str(trainer.device),
            "train/autocast": str(trainer.amp).removeprefix("torch.") if trainer.amp is not None else "none",
            "processes": trainer.dist.world,
            "strategy": trainer.dist.strategy,
        }
        write_outputs(cfg, run, valid, best["p_a"], metrics, trainer.train_curve, trainer.evals, tracker)
        remove_states(run)
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish(exit_code=0)
    return report(cfg, run, metrics)
