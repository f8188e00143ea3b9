"""Batching invariants (hypothesis): every row exactly once, units kept together, order restored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from duelist.core.batching import length_groups, pad, sorted_batches, train_batches
from duelist.data.encoding import Duo
from duelist.models.heads import PairHead, RewardHead
from duelist.models.network_scoring import predict_p_a

pytestmark = pytest.mark.fast  # the developer tier: python -m pytest -m fast


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 500), min_size=1, max_size=300),
    batch_size=st.integers(2, 33),
    group=st.booleans(),
    paired=st.booleans(),
    seed=st.integers(0, 10),
)
def test_train_batches_cover_every_row_once(lengths, batch_size, group, paired, seed) -> None:
    n = len(lengths)
    units = np.arange(n) // 2 if paired else np.arange(n)
    batches = train_batches(lengths, units, batch_size, group, np.random.default_rng(seed))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(n))
    assert all(len(b) <= batch_size for b in batches)
    if paired:
        for b in batches:  # a pair and its swap share a batch
            assert all((units[b] == u).sum() == (units == u).sum() for u in set(units[b].tolist()))


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 400), min_size=1, max_size=10),
    overhead=st.integers(0, 2000),
    budget=st.one_of(st.none(), st.integers(1, 2000)),
)
def test_length_groups_cost_what_the_best_cut_costs(lengths, overhead, budget) -> None:
    """Every position once, longest first, groups in length order, none over the token budget unless it is one
    sequence; their padded tokens plus the overhead per group equal the cheapest of every way to cut the sorted batch
    within the budget (enumerated)."""
    import itertools

    def fits(size: int, width: int) -> bool:
        return budget is None or size == 1 or size * width <= budget

    groups = length_groups(lengths, overhead, budget)
    assert all(fits(len(g), max(lengths[i] for i in g)) for g in groups)
    flat = np.concatenate(groups)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    ordered = np.asarray(lengths)[flat]
    assert (np.diff(ordered) <= 0).all()
    cost = sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)
    desc = sorted(lengths, reverse=True)
    best = min(
        sum((b - a) * desc[a] + overhead for a, b in zip((0, *cuts), (*cuts, len(desc))))
        for k in range(len(desc))
        for cuts in itertools.combinations(range(1, len(desc)), k)
        if all(fits(b - a, desc[a]) for a, b in zip((0, *cuts), (*cuts, len(desc))))
    )
    assert cost == best


@pytest.mark.parametrize("budget", [0, -5])
def test_length_groups_refuse_a_budget_below_one_token(budget) -> None:
    with pytest.raises(ValueError, match=f"max_tokens={budget}"):
        length_groups([3, 2, 1], 0, budget)


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(1, 500), min_size=1, max_size=300), batch_size=st.integers(1, 64))
def test_sorted_batches_cover_every_row_once_longest_first(lengths, batch_size) -> None:
    batches = sorted_batches(lengths, batch_size)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


class LastTokenModel(torch.nn.Module):
    """p_a is a function of the last real token, so any mix-up of rows shows."""

    class Out:
        def __init__(self, logits):
            self.logits = logits

    def forward(self, input_ids, attention_mask):
        last = input_ids.gather(1, (attention_mask.sum(1, keepdim=True) - 1)).float()
        return self.Out(torch.cat([last / 100.0, torch.zeros_like(last)], dim=1))


@settings(max_examples=100, deadline=None)
@given(
    seqs=st.lists(st.lists(st.integers(1, 200), min_size=1, max_size=40), min_size=1, max_size=80),
    batch_size=st.integers(1, 16),
)
def test_predictions_come_back_in_input_order(seqs, batch_size) -> None:
    p = predict_p_a(LastTokenModel(), PairHead(), seqs, pad_id=0, batch_size=batch_size, device=torch.device("cpu"))
    expected = torch.sigmoid(torch.tensor([s[-1] / 100.0 for s in seqs], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(p, expected, rtol=1e-5)


class RecordingModel(LastTokenModel):
    """Remembers the shape of every forward pass."""

    def __init__(self, outputs: int):
        super().__init__()
        self.shapes, self.outputs = [], outputs

    def forward(self, input_ids, attention_mask):
        self.shapes.append(tuple(input_ids.shape))
        return self.Out(super().forward(input_ids, attention_mask).logits[:, : self.outputs])


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(1, 60), st.integers(1, 60)), min_size=1, max_size=50),
    batch_size=st.integers(1, 16),
)
def test_a_forward_pass_holds_batch_size_sequences_for_either_head(lengths, batch_size) -> None:
    """``batch_size`` counts sequences: a reward head's batch of two sequences per row holds as many as a pair
    head's, not twice as many (the same memory and about the same tokens per pass)."""
    rows = [Duo(a=list(range(1, a + 1)), b=list(range(1, b + 1))) for a, b in lengths]
    reward, pair = RecordingModel(outputs=1), RecordingModel(outputs=2)
    p_reward = predict_p_a(reward, RewardHead(), rows, pad_id=0, batch_size=batch_size, device=torch.device("cpu"))
    predict_p_a(pair, PairHead(), [r.a for r in rows], pad_id=0, batch_size=batch_size, device=torch.device("cpu"))
    assert max(n for n, _ in reward.shapes) <= batch_size and max(n for n, _ in pair.shapes) <= batch_size
    assert sum(n for n, _ in reward.shapes) == 2 * len(rows)
    assert len(reward.shapes) == -(-2 * len(rows) // batch_size)
    # the rewards are the last tokens / 100 (column 0 of LastTokenModel): p_a = sigmoid((a - b) / 100)
    expected = 1 / (1 + np.exp(-np.array([(a - b) / 100.0 for a, b in lengths])))
    np.testing.assert_allclose(p_reward, expected, rtol=1e-6)


def test_pad_right_with_mask() -> None:
    ids, mask = pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 4000), min_size=1, max_size=300),
    batch_size=st.integers(1, 64),
    max_tokens=st.integers(1, 20000),
)
def test_token_budget_batches(lengths, batch_size, max_tokens) -> None:
    batches = sorted_batches(lengths, batch_size, max_tokens)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))  # every row exactly once
    for b in batches:
        padded = len(b) * max(lengths[i] for i in b)
        assert len(b) <= batch_size
        assert padded <= max_tokens or len(b) == 1  # only a single over-long row may exceed the budget
    # greedy: a batch stops only when the next row would break a limit
    for b, nxt in zip(batches, batches[1:]):
        width = max(lengths[i] for i in b)
        assert len(b) == batch_size or (len(b) + 1) * width > max_tokens


@settings(max_examples=60, deadline=None)
@given(
    seqs=st.lists(st.lists(st.integers(1, 200), min_size=1, max_size=40), min_size=1, max_size=80),
    max_tokens=st.integers(1, 400),
)
def test_token_budget_predictions_come_back_in_input_order(seqs, max_tokens) -> None:
    cpu = torch.device("cpu")
    p = predict_p_a(LastTokenModel(), PairHead(), seqs, pad_id=0, batch_size=64, device=cpu, max_tokens=max_tokens)
    expected = torch.sigmoid(torch.tensor([s[-1] / 100.0 for s in seqs], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(p, expected, rtol=1e-5)


def test_precision_is_bf16_where_supported_else_fp16(monkeypatch) -> None:
    """T4 (no bf16) gets fp16, Ampere/Hopper get bf16, CPU stays fp32; explicit choices are kept."""
    from duelist.core.hardware import autocast_dtype, torch_dtype

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    for supported, expected in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, s=supported: s)
        assert autocast_dtype("auto", gpu) is expected and torch_dtype("auto", gpu) is expected
    assert autocast_dtype("auto", cpu) is None and torch_dtype("auto", cpu) is torch.float32
    assert autocast_dtype("fp16", gpu) is torch.float16 and autocast_dtype("fp32", gpu) is None
