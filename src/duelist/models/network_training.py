"""Training a network: the network kind's training job, a loop one reads top to bottom.

AdamW with its own learning rate for the head, warmup + cosine, gradient accumulation, autocast (GradScaler for
fp16), validation every ``trainer.eval_every`` steps keeping the best checkpoint, a resumable state every
``trainer.save_every`` steps, and one process per GPU under ``accelerate launch`` / ``torchrun`` (DDP or FSDP2).
The loop's progress is one :class:`~duelist.runs.states.TrainingState`: what a saved state holds is what the loop
reads back.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from duelist.core.batching import length_groups, pad, train_batches
from duelist.core.errors import DuelistError
from duelist.core.hardware import autocast_dtype, half_weights
from duelist.core.metrics import compute_metrics, is_better
from duelist.core.progress import Progress, duration
from duelist.data.splits import augment, fingerprints
from duelist.models.distributed import (
    barrier,
    broadcast,
    full_state_dict,
    gather,
    init_distributed,
    optimizer_state,
    set_optimizer_state,
    set_sharded_weights,
    wrap,
)
from duelist.models.heads import Head, head_of
from duelist.models.interface import Fitted, Pruned, Trial
from duelist.models.network_build import (
    Built,
    build_model,
    head_and_body_parameters,
    is_zero_shot,
    save_checkpoint,
)
from duelist.models.network_scoring import predict_p_a, split_by_length
from duelist.runs.run_dir import RunDir
from duelist.runs.states import SavedState, TrainingState, resolved, rng_state, save_state, set_rng_state

log = logging.getLogger(__name__)

# what one more forward call is taken to cost, in padded tokens, when a batch's sequences are grouped by length: a
# round figure, not tuned (bench/heads.py measures training through it; docs/measurements.md has before and after)
FORWARD_OVERHEAD_TOKENS = 256
KILL_SWITCH = "DUELIST_TEST_KILL_AT_BATCH"  # tests only: N = SIGKILL this process after its N-th training batch


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


def make_optimizer(name: str, groups: list[dict[str, Any]], weight_decay: float) -> torch.optim.Optimizer:
    """``adamw`` (torch) or ``adamw_8bit`` (bitsandbytes: optimizer state in 8 bit, about 75% less of it; CUDA only)."""
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=weight_decay)
    import bitsandbytes as bnb  # adamw_8bit

    return bnb.optim.AdamW8bit(groups, weight_decay=weight_decay)


def pair_logits_of_batch(
    forward: Any,
    head: Head,
    rows: Sequence[Any],
    pad_id: int,
    device: torch.device,
    max_tokens: int | None,
    grouped: bool = True,
) -> tuple[torch.Tensor, int]:
    """A training batch's pair logits (``head.pair_logits``, rows in order) and its real tokens: the head's sequences
    grouped by length (:func:`length_groups`), one forward call per group of at most ``max_tokens`` padded tokens
    (``trainer.max_batch_tokens``), so short sequences are not padded to the longest of the batch and no call is
    larger than the budget; the loss and its gradients are the batch's as one call would give them. ``grouped=False``:
    one call (several processes: each forward of DDP or FSDP2 is a collective, so every process makes as many)."""
    seqs = head.sequences(rows)
    if grouped:
        groups = length_groups([len(s) for s in seqs], FORWARD_OVERHEAD_TOKENS, max_tokens)
    else:
        groups = [np.arange(len(seqs))]
    outputs, tokens = [], 0
    for group in groups:
        batch, mask = pad([seqs[i] for i in group], pad_id)
        outputs.append(forward(input_ids=batch.to(device), attention_mask=mask.to(device)).logits)
        tokens += int(mask.sum())
    in_order = torch.as_tensor(np.argsort(np.concatenate(groups)), device=outputs[0].device)
    return head.pair_logits(torch.cat(outputs)[in_order]), tokens


class KillSwitch:
    """Tests only (``DUELIST_TEST_KILL_AT_BATCH=N``): this process SIGKILLs itself as its training batch N + 1 starts,
    i.e. right after batch N, so a test can kill a run at a known point (:meth:`batch` is called as each starts)."""

    def __init__(self) -> None:
        self.after = int(os.environ.get(KILL_SWITCH, "0"))
        self.batches = 0

    def batch(self) -> None:
        self.batches += 1
        if 0 < self.after < self.batches:
            os.kill(os.getpid(), signal.SIGKILL)


class RowLosses:
    """Each training row's target, loss weight and loss (cross-entropy, or distillation for pseudo-labelled rows with
    ``distillation=kl``), as one weighted mean per batch."""

    def __init__(self, rows: pd.DataFrame, distillation: Any, device: torch.device):
        self.device, self.temperature = device, distillation.temperature
        self.targets = torch.tensor(rows["p_a"].to_numpy(), dtype=torch.float32)
        self.weights = torch.tensor(rows["weight"].to_numpy(), dtype=torch.float32)  # per-source loss weights
        self.distill = torch.tensor(rows["pseudo_label"].to_numpy(dtype=bool) & (distillation.loss == "kl"))

    def __call__(self, logits: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        dev = self.device
        per_row = pair_losses(logits, self.targets[idx].to(dev), self.distill[idx].to(dev), self.temperature)
        return (per_row * self.weights[idx].to(dev)).mean()


@dataclass
class Optimization:
    """What takes an optimizer step: the parameter groups (adapters or backbone, and the head with its own lr), AdamW,
    its schedule, and the loss scaler (enabled for fp16)."""

    groups: list[dict[str, Any]]
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler


@dataclass
class Clock:
    """The loop's progress bar and what its ETA needs: the seconds trained before this process (a resumed state's),
    when it started, and the validations left at their measured cost."""

    bar: Progress
    before: float
    start: float
    evals_left: int
    eval_seconds: list[float] = field(default_factory=list)


class NetworkTraining:
    """The network kind's :class:`~duelist.models.interface.TrainingJob`: this process's part of one run."""

    def __init__(self, cfg: DictConfig, run: RunDir):
        self.cfg, self.run, self.t = cfg, run, cfg.trainer
        self.metric = cfg.optimized_metric
        self.head = head_of(cfg.model)
        self.dist, self.device = init_distributed(self.t.device, self.t.strategy, self.t.dist_timeout_min)
        if self.dist.sharded and cfg.lora.enabled and cfg.lora.qlora:
            raise DuelistError(
                "trainer.strategy=fsdp cannot shard 4-bit QLoRA weights: launch with --multi_gpu (DDP) or use "
                "lora=default / lora=none"
            )
        self.amp: torch.dtype | None = None  # set by fit(), from the precision and the model's weights
        self.state = TrainingState()
        self.kill_switch = KillSwitch()
        self.trial: Trial | None = None  # the sweep trial this run reports its validations to (set by fit)

    def fit(
        self,
        train: pd.DataFrame,
        valid: pd.DataFrame,
        tracker: Any,
        resume: SavedState | None,
        trial: Trial | None = None,
    ) -> Fitted:
        cfg = self.cfg
        self.trial = trial
        t = cfg.trainer
        built = build_model(cfg.model, cfg.lora, self.device, t.seed, t.gradient_checkpointing, is_zero_shot(cfg))
        encoder = self.head.encoder(built.tokenizer, cfg.model)
        rows = augment(train, cfg.augment.swap, cfg.augment.same_batch)
        ids = [] if is_zero_shot(cfg) else encoder.encode(rows, cfg.cache_dir, desc="tokenize train")
        valid_ids = encoder.encode(valid, cfg.cache_dir, desc="tokenize valid")
        trainable = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
        log.info(
            "train %d rows (%d after augmentation), valid %d rows; %d trainable parameters",
            len(train),
            len(rows),
            len(valid),
            trainable,
        )
        self.data = fingerprints(train, valid)  # saved with every state: a resume checks it trains on the same rows
        self.loop(built, rows, ids, valid, valid_ids, tracker, resume)
        best = self.state.best
        if best is None:  # a DDP process other than rank 0: rank 0 scored the validation rows and keeps the best
            return Fitted(np.empty(0), {})
        metrics = {
            **best["metrics"],
            "best_step": best["step"],
            "train/rows": len(rows),
            "train/trainable_parameters": trainable,
            "train/tokens_per_s": best["train/tokens_per_s"],
            "train/tokens": best.get("train/tokens"),  # absent from a state saved before they were recorded
            "train/seconds": best.get("train/seconds"),
            "train/peak_gpu_memory_gb": torch.cuda.max_memory_allocated(self.device) / 1e9
            if self.device.type == "cuda"
            else None,
            "device": str(self.device),
            "train/autocast": str(self.amp).removeprefix("torch.") if self.amp is not None else "none",
            "processes": self.dist.world,
            "strategy": self.dist.strategy,
        }
        return Fitted(best["p_a"], metrics, self.state.train_curve, self.state.evals)

    def loop(
        self,
        built: Built,
        rows: pd.DataFrame,
        ids: list[Any],
        valid: pd.DataFrame,
        valid_ids: list[Any],
        tracker: Any,
        resume: SavedState | None,
    ) -> None:
        """A zero-shot run scores the validation rows once. Otherwise: epochs of batches, an optimizer step every
        ``grad_accum`` batches, and after each step its log line, a validation, a saved state and the pruner's word
        (:meth:`after_step`)."""
        t, model = self.t, built.model
        self.amp = self.autocast(model)
        if is_zero_shot(self.cfg):  # the pretrained reward model's own judgement of the validation rows
            log.info(
                "zero-shot run (trainer.epochs=0): scoring %d validation rows with %s", len(valid), self.cfg.model.name
            )
            self.evaluate(built, valid, valid_ids, tracker)
            return
        rng = np.random.default_rng(t.seed)
        lengths = [len(s) for s in ids]
        units = rows["pair"].to_numpy() if self.cfg.augment.same_batch else np.arange(len(rows))
        per_epoch = self.steps_per_epoch(lengths, units)
        total = t.max_steps if t.max_steps > 0 else max(1, math.ceil(per_epoch * t.epochs))
        forward = self.distribute(model, resume)  # DDP replicas, or FSDP2 shards in place: the optimizer after it
        optim = self.optimization(model, total, resume, rng)
        losses = RowLosses(rows, self.cfg.distillation, self.device)
        log.info("training %d rows (%d optimizer steps, %d per epoch) on %s", len(rows), total, per_epoch, self.device)
        clock = self.clock(total)
        state, running = self.state, []
        model.train()
        while state.step < total:
            for idx in self.epoch_batches(lengths, units, rng):
                running.append(self.forward_backward(forward, built, ids, idx, losses, optim.scaler))
                if len(running) < t.grad_accum:
                    continue
                self.optimizer_step(optim)
                state.step += 1
                state.train_curve.append((state.step, float(np.mean(running))))
                running = []
                self.after_step(built, valid, valid_ids, tracker, optim, rng, clock, total)
                if state.step >= total:
                    break
            state.epoch += 1
            state.batches, state.position = None, 0
        clock.bar.close()

    # the loop's steps -------------------------------------------------------------------------------
    def distribute(self, model: torch.nn.Module, resume: SavedState | None) -> Any:
        """The forward of this process's model: DDP replicas or FSDP2 shards (:func:`wrap`), with a resumed state's
        trainable weights in place on every process."""
        # a resumed state's trainable weights: DDP's start copies rank 0's parameters to every process, FSDP2's shards
        # are sent rank 0's copy
        if resume is not None and self.dist.main and not self.dist.sharded:
            self.load_trainable(model, resume)
        forward = wrap(model, self.dist, self.device)
        if resume is not None and self.dist.sharded:
            if self.dist.main:
                self.load_trainable(model, resume, check_only=True)
            set_sharded_weights(model, resume.weights, self.dist)
        return forward

    def optimization(
        self, model: torch.nn.Module, total: int, resume: SavedState | None, rng: np.random.Generator
    ) -> Optimization:
        """AdamW, its schedule and the loss scaler (fp16 needs loss scaling); a resumed state's, with the loop's
        progress and random state."""
        groups, opt, sched = self.optimizer(model, total)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        if resume is not None:
            set_optimizer_state(model, opt, resume.optimizer, self.dist)  # from rank 0 alone
            sched.load_state_dict(resume.scheduler)
            scaler.load_state_dict(resume.scaler)
            set_rng_state(resume.rng[self.dist.rank], rng)
            self.state = resume.progress
            resume.weights, resume.optimizer = {}, {}  # loaded: free the copies (a 9B model's are gigabytes)
        return Optimization(groups, opt, sched, scaler)

    def clock(self, total: int) -> Clock:
        """One progress bar (not one per process) from the step the run is at; its ETA adds the validations left."""
        t, state = self.t, self.state
        evals_left = sum(
            1 for s in range(state.step + 1, total + 1) if (t.eval_every > 0 and s % t.eval_every == 0) or s == total
        )
        bar = Progress(total, "train", "steps", initial=state.step, enabled=self.dist.main)
        return Clock(bar, state.elapsed_s, time.perf_counter(), evals_left)

    def epoch_batches(self, lengths: list[int], units: np.ndarray, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """This process's batches of the current epoch (the same order on every process), from where a resumed state
        left off."""
        state, world = self.state, self.dist.world
        if state.batches is None:  # a new epoch
            state.batches = train_batches(lengths, units, self.t.batch_size, self.t.group_by_length, rng)
        mine = state.batches[self.dist.rank : len(state.batches) // world * world : world]
        yield from mine[state.position :]

    def forward_backward(
        self, forward: Any, built: Built, ids: list[Any], idx: np.ndarray, losses: RowLosses, scaler: Any
    ) -> float:
        """One batch: the forward pass under autocast (its sequences grouped by length, one call per group: far less
        padding, the same loss), the rows' loss, backward (scaled for fp16 and grad_accum). Returns the loss."""
        self.kill_switch.batch()
        rows = [ids[i] for i in idx]
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits, tokens = pair_logits_of_batch(
                forward,
                self.head,
                rows,
                built.tokenizer.pad_token_id,
                self.device,
                self.t.max_batch_tokens,
                grouped=self.dist.world == 1,
            )
        self.state.tokens += tokens
        loss = losses(logits, idx)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at step {self.state.step}; lower trainer.lr or check the data"
            )
        scaler.scale(loss / self.t.grad_accum).backward()
        self.state.position += 1
        return loss.item()

    def after_step(
        self,
        built: Built,
        valid: pd.DataFrame,
        valid_ids: list[Any],
        tracker: Any,
        optim: Optimization,
        rng: np.random.Generator,
        clock: Clock,
        total: int,
    ) -> None:
        """After an optimizer step: the log line, a validation every ``eval_every`` steps and at the end, a saved state
        every ``save_every`` steps, and after a validation the sweep trial's word: :class:`Pruned` when it says stop
        (a pruned run saves a state it can be continued from)."""
        t, state = self.t, self.state
        state.elapsed_s = clock.before + time.perf_counter() - clock.start
        clock.bar.still_to_come = clock.evals_left * (float(np.mean(clock.eval_seconds)) if clock.eval_seconds else 0.0)
        self.log_step(tracker, clock.bar, optim.sched)
        clock.bar.pause()  # the training rate and ETA count training steps; the ETA adds the validations left
        evaluated = (t.eval_every > 0 and state.step % t.eval_every == 0) or state.step == total
        if evaluated:
            began = time.perf_counter()
            self.evaluate(built, valid, valid_ids, tracker)
            clock.eval_seconds.append(time.perf_counter() - began)
            clock.evals_left -= 1
        saved = t.save_every > 0 and state.step % t.save_every == 0 and state.step < total
        if saved:
            self.save_state(built.model, optim, rng, tracker)
        if evaluated and self.stop_here() and state.step < total:  # the last validation is reported too
            if not saved:  # a pruned run can be resumed if asked (trainer.resume=PATH of this state)
                self.save_state(built.model, optim, rng, tracker)
            clock.bar.close()
            value = float(state.evals[-1][1][self.metric]) if state.evals else float("nan")  # nan: rank > 0
            raise Pruned(state.step, value, state.train_curve, state.evals)
        clock.bar.resume()

    def autocast(self, model: torch.nn.Module) -> torch.dtype | None:
        """The forward pass's autocast dtype; a half-precision base needs one (the trainable parameters are fp32)."""
        half = half_weights(model)
        amp = autocast_dtype(self.t.precision, self.device, half)
        if amp is None and half is not None:
            raise DuelistError(
                f"trainer.precision={self.t.precision} with {str(half).removeprefix('torch.')} weights "
                f"(model.dtype={self.cfg.model.dtype}): the fp32 trainable parameters meet the half-precision base "
                "only under autocast; use trainer.precision=auto, bf16 or fp16"
            )
        return amp

    def steps_per_epoch(self, lengths: list[int], units: np.ndarray) -> int:
        batches = len(train_batches(lengths, units, self.t.batch_size, False, np.random.default_rng(0)))
        return max(1, math.ceil(batches // self.dist.world / self.t.grad_accum))  # each process takes 1/world

    def load_trainable(self, model: torch.nn.Module, resume: SavedState, check_only: bool = False) -> None:
        missing = set(resume.weights) - {n for n, p in model.named_parameters() if p.requires_grad}
        if missing:
            raise DuelistError(
                f"{resume.path}: holds weights this model does not train ({sorted(missing)[:3]}); "
                f"trainer.resume=never starts over"
            )
        if not check_only:
            model.load_state_dict(resume.weights, strict=False)

    def optimizer(self, model: torch.nn.Module, total: int) -> tuple[list[dict[str, Any]], torch.optim.Optimizer, Any]:
        from transformers import get_cosine_schedule_with_warmup

        t = self.t
        head, body = head_and_body_parameters(model)
        groups = [g for g in ({"params": body, "lr": t.lr}, {"params": head, "lr": t.head_lr}) if g["params"]]
        opt = make_optimizer(t.optimizer, groups, t.weight_decay)
        return groups, opt, get_cosine_schedule_with_warmup(opt, int(t.warmup_ratio * total), total)

    def optimizer_step(self, optim: Optimization) -> None:
        opt, scaler = optim.opt, optim.scaler
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_([p for g in optim.groups for p in g["params"]], self.t.max_grad_norm)
        scale = scaler.get_scale()
        scaler.step(opt)  # fp16: skipped when the scaled gradients overflowed (then the scale shrinks)
        scaler.update()
        if not scaler.is_enabled() or scaler.get_scale() >= scale:
            optim.sched.step()  # the schedule follows the steps the optimizer took
        opt.zero_grad(set_to_none=True)

    def log_step(self, tracker: Any, bar: Any, sched: Any) -> None:
        state = self.state
        step, loss = state.train_curve[-1]
        speed = state.tokens / state.elapsed_s
        tracker.log(
            {
                "train/loss": loss,
                "train/lr": sched.get_last_lr()[0],
                "train/tokens_per_s": speed,
                "train/epoch": state.epoch,
            },
            step,
        )
        eta = bar.eta()
        bar.update(1, loss=f"{loss:.4f}", tok_s=f"{speed:,.0f}", run_ETA=duration(eta) if eta is not None else "?")

    def stop_here(self) -> bool:
        """Tell the sweep trial (if any) this validation's metric; True: its pruner stops the run here. Rank 0 asks,
        every process follows."""
        stop = False
        if self.trial is not None and self.dist.main and self.state.evals:
            try:
                stop = self.trial.should_stop(self.state.step, float(self.state.evals[-1][1][self.metric]))
            except Exception as exc:  # a locked or unreachable study: the run goes on (and every process with it)
                log.warning(
                    "step %d: could not report to the sweep trial (%s: %s)", self.state.step, type(exc).__name__, exc
                )
        return bool(broadcast(stop, self.dist))

    def evaluate(self, built: Built, valid: pd.DataFrame, valid_ids: list[list[int]], tracker: Any) -> None:
        """Validation: every process takes part (DDP: each scores its share of the rows; FSDP: the whole fold, its
        forward pass gathers the sharded parameters); rank 0 alone writes the best checkpoint."""
        state = self.state
        p_a = self.validation_p_a(built, valid_ids)
        if p_a is not None:  # every FSDP process; under DDP rank 0 alone (the other processes' shares are with it)
            metrics = compute_metrics(valid, p_a)
            state.evals.append((state.step, metrics))
            tracker.log(metrics, state.step)
            log.info(
                "step %d: val/accuracy=%.4f val/log_loss=%.4f",
                state.step,
                metrics["val/accuracy"],
                metrics["val/log_loss"],
            )
            best = None if state.best is None else state.best["metrics"][self.metric]
            better = is_better(metrics[self.metric], best, self.metric)
            if self.dist.sharded:  # all follow rank 0's decision, so all join the gather below
                better = broadcast(better, self.dist)
            if better:
                speed = state.tokens / state.elapsed_s if state.elapsed_s else 0.0
                state.best = {
                    "step": state.step,
                    "metrics": metrics,
                    "p_a": p_a,
                    "train/tokens_per_s": speed,
                    "train/tokens": state.tokens,  # real (unpadded) tokens read by training so far
                    "train/seconds": state.elapsed_s,  # wall time since training began (earlier validations in it)
                }
                weights = full_state_dict(built.model) if self.dist.sharded else None  # collective: every process
                if self.dist.main:
                    save_checkpoint(built, self.cfg, self.run.checkpoint, weights, metrics, state.step)
        barrier(self.dist)

    def validation_p_a(self, built: Built, valid_ids: list[list[int]]) -> np.ndarray | None:
        """P(A wins) of every validation row on rank 0 (None elsewhere under DDP). Under DDP every process scores a
        share of the rows (dealt by length) and rank 0 gathers them, so validation takes 1/world of the time instead
        of keeping the others waiting (NCCL's timeout would end the run)."""

        def score(seqs: list[list[int]]) -> np.ndarray:
            pad_id = built.tokenizer.pad_token_id
            return predict_p_a(
                built.model,
                self.head,
                seqs,
                pad_id,
                self.t.eval_batch_size,
                self.device,
                self.amp,
                desc="validate",
                quiet=True,
            )

        if self.dist.world == 1 or self.dist.sharded:
            return score(valid_ids)
        mine = split_by_length([len(s) for s in valid_ids], self.dist.world)[self.dist.rank]
        parts = gather((mine, score([valid_ids[i] for i in mine])), self.dist)
        if not self.dist.main:
            return None
        shares = " + ".join(str(len(rows)) for rows, _ in parts)
        log.info("validation: %d processes scored %s of %d rows", self.dist.world, shares, len(valid_ids))
        p_a = np.full(len(valid_ids), np.nan)
        for rows, values in parts:
            p_a[rows] = values
        return p_a

    def save_state(self, model: torch.nn.Module, optim: Optimization, rng: np.random.Generator, tracker: Any) -> None:
        """Write a resumable state (:mod:`duelist.runs.states`). Every process takes part: under FSDP the weights and
        the optimizer state are gathered, and each process's RNG states go to rank 0, which alone writes."""
        started = time.perf_counter()
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}  # not state_dict(): 4-bit is packed
        if self.dist.sharded:  # collective: the full weights of every shard, on rank 0
            weights = {k: v for k, v in full_state_dict(model).items() if k in trainable}
        else:
            weights = {k: p.detach() for k, p in trainable.items()}
        optimizer = optimizer_state(model, optim.opt)
        rngs = gather(rng_state(rng), self.dist)
        if self.dist.main:
            saved = SavedState(
                path=self.run.path,
                progress=self.state,
                scheduler=optim.sched.state_dict(),
                scaler=optim.scaler.state_dict(),
                rng=rngs,
                wandb_id=tracker.run_id,
                config=resolved(self.cfg),
                processes=self.dist.world,
                data=self.data,
                weights=weights,
                optimizer=optimizer,
            )
            path = save_state(self.run, saved, self.t.keep_states)
            log.info("saved training state %s (%.1f s)", path, time.perf_counter() - started)
        barrier(self.dist)
