"""The heads a network ends in (``model.head``), one class each, found by one lookup: :func:`head_of`.

A head owns everything that differs between them: how many outputs the classifier has, how a pair becomes token
sequences (its encoder), how a batch of rows becomes the model's input rows and its outputs the two logits of each
pair (whose softmax is ``[P(A wins), P(B wins)]``), whether exchanging A and B mirrors its answer exactly, the
config rules that concern it, and the tokens a row costs (what ``plan`` counts). Nothing else asks which head a model
has; a new head is one class here and one value of :class:`duelist.core.config.Head`.

- :class:`PairHead` (``pair``): prompt, A and B in one sequence, a 2-label head;
- :class:`RewardHead` (``reward``): prompt + A and prompt + B as two sequences through a one-output head,
  ``p_a = sigmoid(r_a - r_b)`` (Bradley-Terry): swap-symmetric.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from duelist.core.errors import DuelistError
from duelist.data.encoding import Duo, PairEncoder, ResponseEncoder


class Head:
    """What every head provides (the two below implement it)."""

    name: str  # the value of model.head
    outputs: int  # the classifier's outputs (num_labels)
    sequences_per_pair: int  # token sequences a pair is read as
    swap_symmetric: bool  # exchanging A and B gives 1 - p_a exactly: swap-TTA adds nothing

    def encoder(self, tokenizer: Any, model_cfg: Any) -> PairEncoder | ResponseEncoder:
        """How a pair becomes this head's token sequences (``model.template``, ``max_length``, ...)."""
        raise NotImplementedError

    def sequences(self, rows: Sequence[Any]) -> list[Sequence[int]]:
        """The model's input rows for a batch of encoded rows, in the order its outputs come back."""
        raise NotImplementedError

    def pair_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Two logits per pair (softmax: ``[P(A wins), P(B wins)]``) from the outputs for :meth:`sequences`."""
        raise NotImplementedError

    def sequence_tokens(self, rows: Sequence[Any]) -> np.ndarray:
        """Tokens of each encoded row's sequences: rows x :attr:`sequences_per_pair` (what ``plan`` counts)."""
        raise NotImplementedError

    def sequence_chars(self, prompt: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Characters of each row's sequences from its texts' lengths: rows x :attr:`sequences_per_pair` (``plan``
        before a run exists, without the model's tokenizer)."""
        raise NotImplementedError

    def check(self, cfg: Any, zero_shot: bool) -> None:
        """The rules between train.py's settings that concern this head (``zero_shot``: ``trainer.epochs=0``)."""

    def passes(self, tta: str) -> int:
        """Forward passes over every row with this test-time augmentation (``none`` | ``swap``)."""
        return 2 if tta == "swap" and not self.swap_symmetric else 1


class PairHead(Head):
    """``model.head=pair``: both responses read together, one sequence per pair, logits ``[A wins, B wins]``."""

    name = "pair"
    outputs = 2
    sequences_per_pair = 1
    swap_symmetric = False  # p_a(B, A) is another forward pass, not 1 - p_a(A, B): swap-TTA averages the two

    def encoder(self, tokenizer: Any, model_cfg: Any) -> PairEncoder:
        return PairEncoder.for_model(tokenizer, model_cfg)

    def sequences(self, rows: Sequence[Sequence[int]]) -> list[Sequence[int]]:
        return list(rows)

    def pair_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def sequence_tokens(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        return np.array([[len(s)] for s in rows], dtype=np.int64).reshape(-1, 1)

    def sequence_chars(self, prompt: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (prompt + a + b).reshape(-1, 1)

    def check(self, cfg: Any, zero_shot: bool) -> None:
        if zero_shot:
            raise DuelistError(
                "trainer.epochs=0 is a zero-shot run: a pretrained reward model scores with its own head. Use "
                "model.head=reward with a reward model (e.g. model=skywork_reward_v2_qwen3_8b), or trainer.epochs > 0"
            )


class RewardHead(Head):
    """``model.head=reward``: each response scored with the prompt on its own, one reward per sequence; the pair's
    logits are ``[r_a, r_b]``, so ``p_a = sigmoid(r_a - r_b)`` and exchanging A and B gives ``1 - p_a`` exactly."""

    name = "reward"
    outputs = 1
    sequences_per_pair = 2
    swap_symmetric = True

    def encoder(self, tokenizer: Any, model_cfg: Any) -> ResponseEncoder:
        return ResponseEncoder.for_model(tokenizer, model_cfg)

    def sequences(self, rows: Sequence[Duo]) -> list[Sequence[int]]:
        return [s for duo in rows for s in (duo.a, duo.b)]  # A then B: the rewards reshape to [r_a, r_b] per pair

    def pair_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.reshape(-1, 2)

    def sequence_tokens(self, rows: Sequence[Duo]) -> np.ndarray:
        return np.array([[len(d.a), len(d.b)] for d in rows], dtype=np.int64).reshape(-1, 2)

    def sequence_chars(self, prompt: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.stack([prompt + a, prompt + b], axis=1)

    def check(self, cfg: Any, zero_shot: bool) -> None:
        if cfg.augment.swap:
            raise DuelistError(
                "augment=swap with model.head=reward: a swapped pair is the same two sequences with the label flipped, "
                "the same loss at twice the cost (the reward head is swap-symmetric); drop augment=swap"
            )
        if zero_shot and cfg.model.init != "pretrained":
            raise DuelistError(
                "trainer.epochs=0 is a zero-shot run: a pretrained reward model scores with its own head, and "
                "model.init=random has none. Use a reward model (e.g. model=skywork_reward_v2_qwen3_8b), or "
                "trainer.epochs > 0"
            )


HEADS: dict[str, Head] = {head.name: head for head in (PairHead(), RewardHead())}


def head_of(model_cfg: Any) -> Head:
    """The head of a network's ``model`` config (composed, or saved in a run dir)."""
    return HEADS[str(model_cfg.head)]
