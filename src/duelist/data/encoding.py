"""Turn a (prompt, response A, response B) pair into one token sequence within a token budget.

The sequence is a fixed frame (plain markers, or the model's chat template) with three slots.
Budget: the prompt is capped at ``prompt_max_tokens``; the two responses share the rest in
proportion to their lengths; space the responses don't need goes back to the prompt. A part
that is cut keeps its head and its tail around a visible cut marker, and every part keeps at
least one head and one tail token: no response is ever dropped.

Optionally (``model.length_hint``) the frame opens with what the longer-answer rule sees, which a
cut text hides: ``buckets`` writes ``Length: A much longer`` / ``A longer`` / ``similar`` / ``B longer``
/ ``B much longer`` (from the ratio of the responses' character counts), ``chars`` writes both counts
(``Length: A 1,240 chars, B 310 chars``). The counts are of the whole texts, before any cut. With
``model.language_tag`` it opens with the row's language first (``Language: Russian``: given, or detected from the
prompt; a label outside the WSDM names is ``other``), so one multilingual model can condition on it.

Tokenised tables are cached on disk (parquet, keyed by tokenizer, frame, budget and the text)
and reused by later runs.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from duelist.core.errors import DuelistError
from duelist.core.files import write_parquet
from duelist.core.languages import CODES
from duelist.core.progress import Progress
from duelist.data.reading import split_turns

log = logging.getLogger(__name__)

CUT_MARKER = " [...] "
SLOTS = ("\x00HINT\x00", "\x00PROMPT\x00", "\x00RESPONSE_A\x00", "\x00RESPONSE_B\x00")
PLAIN_FRAME = "{hint}Prompt:\n{prompt}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\nWhich response is better?"
LENGTH_HINTS = ("none", "buckets", "chars")
LONGER, MUCH_LONGER = 1.25, 2.0  # character-count ratios where "longer" and "much longer" begin


def length_hint(mode: str, len_a: int, len_b: int) -> str:
    """The text that opens the frame for responses of ``len_a`` and ``len_b`` characters ("" for ``none``)."""
    if mode == "none":
        return ""
    if mode == "chars":
        return f"Length: A {len_a:,} chars, B {len_b:,} chars\n\n"
    ratio = (len_a + 1) / (len_b + 1)
    longer = "A" if ratio >= 1 else "B"
    ratio = max(ratio, 1 / ratio)
    word = "much longer" if ratio >= MUCH_LONGER else "longer" if ratio >= LONGER else None
    return f"Length: {longer} {word}\n\n" if word else "Length: similar\n\n"


TAG_NAMES = frozenset(CODES.values()) | {"unknown"}  # the tag names a known language; any other label is "other"


def language_tag(language: Any) -> str:
    """The text that opens the frame with ``model.language_tag=true``."""
    name = (
        language
        if isinstance(language, str) and language in TAG_NAMES
        else "other"
        if isinstance(language, str) and language
        else "unknown"
    )
    return f"Language: {name}\n\n"


@dataclass(frozen=True)
class Frame:
    """Token ids around the three slots, and the special tokens the tokenizer wraps them in."""

    prefix: tuple[int, ...]
    mid_p: tuple[int, ...]
    mid_a: tuple[int, ...]
    mid_b: tuple[int, ...]
    suffix: tuple[int, ...]
    special_head: tuple[int, ...]
    special_tail: tuple[int, ...]
    marker: tuple[int, ...]

    @property
    def overhead(self) -> int:
        return (
            len(self.prefix)
            + len(self.mid_p)
            + len(self.mid_a)
            + len(self.mid_b)
            + len(self.suffix)
            + len(self.special_head)
            + len(self.special_tail)
        )

    @property
    def min_part(self) -> int:
        """Smallest budget a cut part can have: one head token, the marker, one tail token."""
        return len(self.marker) + 2


def _ids(tokenizer: Any, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()


def _special_wrap(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The special tokens the tokenizer puts before and after a text (BERT: [CLS] ... [SEP]; Gemma: <bos>)."""
    probe = "a"
    bare = list(_ids(tokenizer, probe))
    wrapped = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    at = next(i for i in range(len(wrapped) - len(bare) + 1) if wrapped[i : i + len(bare)] == bare)
    return tuple(wrapped[:at]), tuple(wrapped[at + len(bare) :])


def build_frame(tokenizer: Any, template: str) -> Frame:
    """Tokenise the fixed text of the chosen template once."""
    content = PLAIN_FRAME.format(hint=SLOTS[0], prompt=SLOTS[1], a=SLOTS[2], b=SLOTS[3])
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise DuelistError("model.template=chat but the tokenizer has no chat template; use model.template=plain")
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        head: tuple[int, ...] = ()
        tail: tuple[int, ...] = ()  # the chat template writes its own special tokens
    elif template == "plain":
        text = content
        head, tail = _special_wrap(tokenizer)
    else:
        raise DuelistError(f"model.template={template!r}: use plain or chat")
    before, rest = text.split(SLOTS[0])
    mid_p, rest = rest.split(SLOTS[1])
    mid_a, rest = rest.split(SLOTS[2])
    mid_b, after = rest.split(SLOTS[3])
    return Frame(
        _ids(tokenizer, before),
        _ids(tokenizer, mid_p),
        _ids(tokenizer, mid_a),
        _ids(tokenizer, mid_b),
        _ids(tokenizer, after),
        head,
        tail,
        _ids(tokenizer, CUT_MARKER),
    )


def cut(ids: Sequence[int], budget: int, marker: Sequence[int]) -> list[int]:
    """Keep ``ids`` whole if they fit; else head + marker + tail, exactly ``budget`` tokens."""
    if len(ids) <= budget:
        return list(ids)
    keep = budget - len(marker)
    head = (keep + 1) // 2
    tail = keep - head
    return list(ids[:head]) + list(marker) + list(ids[len(ids) - tail :])


def allocate(n_prompt: int, n_a: int, n_b: int, available: int, prompt_max: int, min_part: int) -> tuple[int, int, int]:
    """Token budgets for prompt, A and B; they sum to at most ``available``."""
    floor_p, floor_a, floor_b = min(n_prompt, min_part), min(n_a, min_part), min(n_b, min_part)
    if floor_p + floor_a + floor_b > available:
        raise ValueError("budget too small")
    bp = max(floor_p, min(n_prompt, prompt_max, available - floor_a - floor_b))
    rest = available - bp
    if n_a + n_b <= rest:
        ba, bb = n_a, n_b
    else:
        ba = int(round(rest * n_a / (n_a + n_b)))
        ba = min(n_a, max(floor_a, min(ba, rest - floor_b)))
        bb = min(n_b, rest - ba)
        ba = min(n_a, rest - bb)  # give B's unused share back to A
    bp = min(n_prompt, available - ba - bb)  # space the responses don't need goes back to the prompt
    return bp, ba, bb


def min_length(frame: Frame) -> int:
    return frame.overhead + 3 * frame.min_part


def assemble(
    frame: Frame,
    prompt: Sequence[int],
    a: Sequence[int],
    b: Sequence[int],
    max_length: int,
    prompt_max: int,
    hint: Sequence[int] = (),
) -> list[int]:
    available = max_length - frame.overhead - len(hint)
    bp, ba, bb = allocate(len(prompt), len(a), len(b), available, prompt_max, frame.min_part)
    body = (
        list(frame.prefix)
        + list(hint)
        + list(frame.mid_p)
        + cut(prompt, bp, frame.marker)
        + list(frame.mid_a)
        + cut(a, ba, frame.marker)
    )
    body += list(frame.mid_b) + cut(b, bb, frame.marker) + list(frame.suffix)
    return list(frame.special_head) + body + list(frame.special_tail)


def vocabulary(tokenizer: Any) -> str:
    """The tokenizer as text (its vocabulary and rules): part of every encoder's fingerprint."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))


def digest(parts: Sequence[str]) -> str:
    """An encoder's fingerprint: a short hash of what decides its tokens."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def cache_file_of(fingerprint: str, df: pd.DataFrame, language_tag: bool, cache_dir: str | None) -> Path | None:
    """Where the tokens of ``df``'s texts under an encoder of this fingerprint are cached (None: no cache)."""
    if not cache_dir:
        return None
    columns = ["prompt", "response_a", "response_b"] + (["language"] if language_tag and "language" in df else [])
    text_hash = pd.util.hash_pandas_object(df[columns], index=False).to_numpy()
    key = hashlib.sha256(fingerprint.encode() + text_hash.tobytes()).hexdigest()[:24]
    return Path(cache_dir) / "tokenized" / f"{key}.parquet"


def read_cache(cache_file: Path | None, rows: int, desc: str) -> pd.DataFrame | None:
    """The cached token table, if it is there and whole."""
    if cache_file is None or not cache_file.exists():
        return None
    cached = pd.read_parquet(cache_file)
    if len(cached) != rows:
        return None
    log.info("%s: reused cached tokens %s", desc, cache_file)
    return cached


class PairEncoder:
    """Encodes canonical rows for one tokenizer, template and budget."""

    def __init__(
        self,
        tokenizer: Any,
        template: str,
        max_length: int,
        prompt_max_tokens: int,
        length_hint: str = "none",
        language_tag: bool = False,
    ):
        self.tokenizer = tokenizer
        self.language_tag = bool(language_tag)
        self.template = template
        self.max_length = int(max_length)
        self.prompt_max_tokens = int(prompt_max_tokens)
        self.length_hint = str(length_hint)
        if self.length_hint not in LENGTH_HINTS:
            raise ValueError(f"length_hint={length_hint!r}: one of {LENGTH_HINTS}")
        self.frame = build_frame(tokenizer, template)
        ending = list(self.frame.suffix) + list(self.frame.special_tail)
        if ending and ending[-1] == tokenizer.pad_token_id:
            # Hugging Face classifies from the rightmost non-pad token, vLLM from the last one: they must be one token
            raise DuelistError(
                f"the {template} template of this tokenizer ends in its pad token (id {tokenizer.pad_token_id}): "
                f"the classifier would read an earlier token; give the tokenizer a pad token of its own"
            )
        self._hints: dict[str, tuple[int, ...]] = {}
        extremes = [
            (10**9, 10**9),
            (10**9, 1),
            (1, 10**9),
            (150, 100),
            (100, 150),
        ]  # widest counts, every bucket phrase
        tags = sorted(TAG_NAMES | {"other"}) if self.language_tag else [None]
        longest_hint = max(len(self._hint_ids(a, b, tag)) for a, b in extremes for tag in tags)
        needed = min_length(self.frame) + longest_hint
        if self.max_length < needed:
            raise DuelistError(
                f"model.max_length={self.max_length} is too small for the {template} template of this tokenizer: "
                f"it needs at least {needed} tokens (frame {self.frame.overhead} + length hint {longest_hint} + 3 "
                f"parts of {self.frame.min_part})"
            )

    @classmethod
    def for_model(cls, tokenizer: Any, model_cfg: Any) -> "PairEncoder":
        """The encoder a model config describes (``model.template``, ``max_length``, ``prompt_max_tokens``,
        ``length_hint``, ``language_tag``)."""
        return cls(
            tokenizer,
            model_cfg.template,
            model_cfg.max_length,
            model_cfg.prompt_max_tokens,
            model_cfg.length_hint,
            bool(model_cfg.get("language_tag") or False),
        )

    def _hint_ids(self, len_a: int, len_b: int, language: Any = None) -> tuple[int, ...]:
        text = (language_tag(language) if self.language_tag else "") + length_hint(self.length_hint, len_a, len_b)
        if text not in self._hints:
            self._hints[text] = _ids(self.tokenizer, text)
        return self._hints[text]

    def encode_one(self, prompt: str, a: str, b: str, language: str | None = None) -> list[int]:
        tok = self.tokenizer
        return assemble(
            self.frame,
            _ids(tok, prompt),
            _ids(tok, a),
            _ids(tok, b),
            self.max_length,
            self.prompt_max_tokens,
            self._hint_ids(len(a), len(b), language),
        )

    def fingerprint(self) -> str:
        parts = [repr(self.frame), str(self.max_length), str(self.prompt_max_tokens), self.template, self.length_hint]
        return digest([vocabulary(self.tokenizer), *parts] + (["language_tag"] if self.language_tag else []))

    def encode(self, df: pd.DataFrame, cache_dir: str | None = None, desc: str = "tokenize") -> list[list[int]]:
        """Token ids for every row of ``df`` (same order); cached under ``cache_dir`` when given."""
        cache_file = cache_file_of(self.fingerprint(), df, self.language_tag, cache_dir)
        cached = read_cache(cache_file, len(df), desc)
        if cached is not None:
            return [x.tolist() for x in cached["input_ids"]]  # numpy int32 -> Python ints, at C speed
        out: list[list[int]] = []
        tok = self.tokenizer
        chunk = 512
        with Progress(len(df), desc, "rows") as bar:
            for start in range(0, len(df), chunk):
                part = df.iloc[start : start + chunk]
                enc = [
                    tok(part[c].tolist(), add_special_tokens=False)["input_ids"]
                    for c in ("prompt", "response_a", "response_b")
                ]
                languages = part["language"] if self.language_tag and "language" in part else [None] * len(part)
                hints = [
                    self._hint_ids(len(a), len(b), lang)
                    for a, b, lang in zip(part["response_a"], part["response_b"], languages)
                ]
                for p, a, b, h in zip(*enc, hints):
                    out.append(assemble(self.frame, p, a, b, self.max_length, self.prompt_max_tokens, h))
                bar.update(len(part))
        if cache_file is not None:
            write_parquet(cache_file, pd.DataFrame({"input_ids": [np.asarray(x, dtype=np.int32) for x in out]}))
        return out


# ---- head=reward: each response with the prompt, as its own sequence ----------------------------------------------


@dataclass(frozen=True, eq=False)
class Duo:
    """The two sequences of one pair for a reward head: prompt + response A, prompt + response B."""

    a: Sequence[int]
    b: Sequence[int]

    def __len__(self) -> int:
        """The padded tokens the two take in a batch: what sorting, token budgets and timing count."""
        return 2 * max(len(self.a), len(self.b))


PLAIN_TURN = "Prompt:\n{prompt}\n\nResponse:\n{response}"
HINT_SLOT = "\x00HINT\x00"


def _slot(kind: str, turn: int) -> str:
    return f"\x00{kind}{turn}\x00"


def response_length_hint(mode: str, own: int, other: int) -> str:
    """:func:`length_hint` as one response's sequence sees it: its length against the other's (``own``, ``other``:
    character counts). Each sequence gets the mirror of the other's, so swapping A and B swaps the two sequences."""
    if mode == "none":
        return ""
    if mode == "chars":
        return f"Length: {own:,} chars (the other: {other:,})\n\n"
    ratio = (own + 1) / (other + 1)
    if ratio >= MUCH_LONGER:
        return "Length: much longer than the other\n\n"
    if ratio >= LONGER:
        return "Length: longer than the other\n\n"
    if 1 / ratio >= MUCH_LONGER:
        return "Length: much shorter than the other\n\n"
    if 1 / ratio >= LONGER:
        return "Length: shorter than the other\n\n"
    return "Length: similar to the other\n\n"


@dataclass(frozen=True)
class TurnFrame:
    """Token ids around the slots of a ``turns``-turn conversation (hint, then prompt 1, response 1, prompt 2, ...):
    ``pieces[i]`` comes before slot i, the last piece after the last slot."""

    pieces: tuple[tuple[int, ...], ...]
    special_head: tuple[int, ...]
    special_tail: tuple[int, ...]
    marker: tuple[int, ...]
    strips: tuple[tuple[Optional[str], Optional[str]], ...] = ()  # per message slot: what the template strips

    @property
    def overhead(self) -> int:
        return sum(len(p) for p in self.pieces) + len(self.special_head) + len(self.special_tail)

    def as_template_writes(self, slot: int, text: str, opens: bool = True) -> str:
        """``text`` as the chat template writes it into message slot ``slot`` (1: the first prompt, 2: its response,
        ...): Llama's and Gemma's ``| trim``, Qwen3's ``lstrip('\n')`` of the last answer. ``opens``: the text opens
        its message (not so for a prompt after a hint)."""
        if slot >= len(self.strips):
            return text
        left, right = self.strips[slot]
        text = text if left is None or not opens else text.lstrip(left or None)
        return text if right is None else text.rstrip(right or None)

    @property
    def min_part(self) -> int:
        return len(self.marker) + 2


def build_turn_frame(tokenizer: Any, template: str, turns: int, reasoning: bool = False) -> TurnFrame:
    """The fixed text of a conversation of ``turns`` prompt/response turns: the tokenizer's chat template (user and
    assistant messages, no generation prompt: what a reward model reads) or plain ``Prompt:``/``Response:`` markers.
    ``reasoning``: the last answer holds a think block, written as the template writes one (a slot for the
    reasoning before the last response's: :func:`think_rules`)."""
    slots = [HINT_SLOT] + [_slot(k, t) for t in range(turns) for k in ("P", "R")]
    if reasoning:
        slots.insert(len(slots) - 1, THINK_SLOT)
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise DuelistError("model.template=chat but the tokenizer has no chat template; use model.template=plain")
        messages = []
        for t in range(turns):
            messages.append({"role": "user", "content": (HINT_SLOT if t == 0 else "") + _slot("P", t)})
            messages.append({"role": "assistant", "content": _slot("R", t)})
        strips = tuple(
            [(None, None)] + [_stripped(tokenizer, messages, i) for i in range(len(messages))]
        )  # slot 0 is the hint
        if reasoning:
            messages[-1]["content"] = THINK_OPEN + THINK_SLOT + THINK_CLOSE + messages[-1]["content"]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        head: tuple[int, ...] = ()
        tail: tuple[int, ...] = ()
    elif template == "plain":
        text = HINT_SLOT + "\n\n".join(
            PLAIN_TURN.format(prompt=_slot("P", t), response=_slot("R", t)) for t in range(turns)
        )
        head, tail = _special_wrap(tokenizer)
        strips = ()
    else:
        raise DuelistError(f"model.template={template!r}: use plain or chat")
    pieces, rest = [], text
    for slot in slots:
        if rest.count(slot) != 1:
            raise DuelistError(
                f"the {template} template of this tokenizer does not keep every message of a {turns}-turn conversation "
                "once; use model.template=plain"
            )
        before, rest = rest.split(slot)
        pieces.append(_ids(tokenizer, before))
    pieces.append(_ids(tokenizer, rest))
    return TurnFrame(tuple(pieces), head, tail, _ids(tokenizer, CUT_MARKER), strips)


THINK_SLOT = "\x00THINK\x00"
THINK_OPEN, THINK_CLOSE = "<think>\n", "\n</think>\n\n"  # a think block as Qwen3's chat template writes one


@dataclass(frozen=True)
class ThinkRules:
    """How a chat template writes an answer that holds ``<think>...</think>``: Qwen3's moves the last answer's
    reasoning into a think block of its own (``<think>\nREASONING\n</think>\n\nANSWER``) and drops the reasoning
    of earlier answers; most templates write the text as it is (no rules)."""

    last: bool  # the last answer's reasoning is rewritten into the template's think block
    earlier: bool  # earlier answers keep only what follows </think>


def think_rules(tokenizer: Any, template: str) -> Optional[ThinkRules]:
    """The template's :class:`ThinkRules`, found by writing answers that hold a think block (None: it writes them as
    they are, or a plain template)."""
    if template != "chat" or not getattr(tokenizer, "chat_template", None):
        return None
    answer = "<think>REASONING</think>ANSWER"
    one = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": answer}], tokenize=False
    )
    two = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "Q"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "A2"},
        ],
        tokenize=False,
    )
    rules = ThinkRules(last=answer not in one and "REASONING" in one, earlier="REASONING" not in two)
    return rules if rules.last or rules.earlier else None


def split_reasoning(text: str) -> tuple[str, str]:
    """An answer's reasoning and what follows it, as Qwen3's chat template splits them at the last ``</think>``."""
    reasoning = text.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
    return reasoning.strip("\n"), text.split("</think>")[-1].lstrip("\n")


def _stripped(tokenizer: Any, messages: list[dict[str, str]], i: int) -> tuple[Optional[str], Optional[str]]:
    """What the chat template strips from the ends of message ``i``'s content, found by writing it between
    whitespace: ``(left, right)``, each None (kept), ``"\n"`` (newlines only) or ``""`` (all whitespace)."""
    plain = [{**m, "content": m["content"].replace(HINT_SLOT, "")} for m in messages]
    slot = plain[i]["content"]
    probe = [dict(m) for m in plain]
    probe[i]["content"] = "\n " + slot + " \n"
    base = tokenizer.apply_chat_template(plain, tokenize=False)
    text = tokenizer.apply_chat_template(probe, tokenize=False)
    at, found = base.index(slot), text.index(slot)
    kept_left = text[at:found]
    after = base[at + len(slot) :]
    rest = text[found + len(slot) :]
    kept_right = rest[: len(rest) - len(after)] if rest.endswith(after) else " \n"
    modes = {"\n ": None, " ": "\n", "": ""}
    return modes.get(kept_left), modes.get(kept_right[::-1])


def share(lengths: Sequence[int], budget: int, min_part: int) -> list[int]:
    """Budgets for parts of ``lengths`` tokens that sum to ``budget`` (or to their lengths, when they fit): every part
    keeps ``min(length, min_part)``, the rest goes in proportion to what each part has beyond that."""
    if sum(lengths) <= budget:
        return list(lengths)
    floors = [min(n, min_part) for n in lengths]
    room = [n - f for n, f in zip(lengths, floors)]
    rest = budget - sum(floors)
    give = [rest * r // sum(room) for r in room]
    for i in sorted(range(len(room)), key=lambda i: -(rest * room[i] % sum(room)))[: rest - sum(give)]:
        give[i] += 1
    return [f + g for f, g in zip(floors, give)]


class ResponseEncoder:
    """``model.head=reward``: each row becomes a :class:`Duo`, the conversation with response A and with response B,
    each within ``max_length`` tokens. A multi-turn pair (LMSYS: ``[Turn i]`` texts with as many prompts as
    responses) is written as its turns. Budget of a sequence: the prompts together capped at ``prompt_max_tokens``,
    the response(s) get the rest, space they don't need goes back to the prompts; several turns share their side's
    budget in proportion to their lengths; cut parts keep head and tail around the cut marker."""

    def __init__(
        self,
        tokenizer: Any,
        template: str,
        max_length: int,
        prompt_max_tokens: int,
        length_hint: str = "none",
        language_tag: bool = False,
    ):
        self.tokenizer, self.template = tokenizer, template
        self.max_length, self.prompt_max_tokens = int(max_length), int(prompt_max_tokens)
        self.length_hint, self.language_tag = str(length_hint), bool(language_tag)
        if self.length_hint not in LENGTH_HINTS:
            raise ValueError(f"length_hint={length_hint!r}: one of {LENGTH_HINTS}")
        self._frames: dict[tuple[int, bool], TurnFrame] = {}
        self._hints: dict[str, tuple[int, ...]] = {}
        self.think = think_rules(tokenizer, template)  # how the template writes an answer's <think> block
        frame = self.frame(1)
        ending = list(frame.pieces[-1]) + list(frame.special_tail)
        if ending and ending[-1] == tokenizer.pad_token_id:
            raise DuelistError(
                f"the {template} template of this tokenizer ends in its pad token (id {tokenizer.pad_token_id}): "
                f"the reward head would read an earlier token; give the tokenizer a pad token of its own"
            )
        tags = sorted(TAG_NAMES | {"other"}) if self.language_tag else [None]
        extremes = [(10**9, 10**9), (10**9, 1), (1, 10**9), (150, 100), (100, 150), (100, 100)]
        longest_hint = max(len(self._hint_ids(a, b, tag)) for a, b in extremes for tag in tags)
        needed = frame.overhead + longest_hint + 2 * frame.min_part
        if self.max_length < needed:
            raise DuelistError(
                f"model.max_length={self.max_length} is too small for the {template} template of this tokenizer with "
                f"model.head=reward: it needs at least {needed} tokens per sequence (frame {frame.overhead} + length "
                f"hint {longest_hint} + 2 parts of {frame.min_part})"
            )

    @classmethod
    def for_model(cls, tokenizer: Any, model_cfg: Any) -> "ResponseEncoder":
        return cls(
            tokenizer,
            model_cfg.template,
            model_cfg.max_length,
            model_cfg.prompt_max_tokens,
            model_cfg.length_hint,
            bool(model_cfg.get("language_tag") or False),
        )

    def frame(self, turns: int, reasoning: bool = False) -> TurnFrame:
        if (turns, reasoning) not in self._frames:
            self._frames[turns, reasoning] = build_turn_frame(self.tokenizer, self.template, turns, reasoning)
        return self._frames[turns, reasoning]

    def _hint_ids(self, own: int, other: int, language: Any = None) -> tuple[int, ...]:
        text = (language_tag(language) if self.language_tag else "") + response_length_hint(
            self.length_hint, own, other
        )
        if text not in self._hints:
            self._hints[text] = _ids(self.tokenizer, text)
        return self._hints[text]

    def sequence(
        self,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[Sequence[int]],
        hint: Sequence[int],
        reasoning: Optional[Sequence[int]] = None,
    ) -> list[int]:
        """One conversation's tokens: ``prompts[i]`` and ``responses[i]`` are turn i's token ids; ``reasoning``: the
        last answer's think block, where the template gives it one (it shares the responses' budget)."""
        frame = self.frame(len(prompts), reasoning is not None)
        answers = [*responses[:-1], *([reasoning] if reasoning is not None else []), responses[-1]]
        available = self.max_length - frame.overhead - len(hint)
        floors = [min(len(x), frame.min_part) for x in (*prompts, *answers)]
        if sum(floors) > available:  # too many turns for the budget: one turn of the joined texts fits (checked)
            gap = list(_ids(self.tokenizer, "\n\n"))
            joined = [
                [t for i, part in enumerate(side) for t in (gap if i else []) + list(part)]
                for side in (prompts, responses)
            ]
            return self.sequence([joined[0]], [joined[1]], hint, reasoning)
        n_p, n_r = sum(map(len, prompts)), sum(map(len, answers))
        floor_p, floor_r = sum(floors[: len(prompts)]), sum(floors[len(prompts) :])
        bp = max(floor_p, min(n_p, self.prompt_max_tokens, available - floor_r))
        br = min(n_r, available - bp)
        bp = min(n_p, available - br)  # space the responses don't need goes back to the prompts
        cut_p = [cut(p, b, frame.marker) for p, b in zip(prompts, share([len(p) for p in prompts], bp, frame.min_part))]
        cut_r = [cut(r, b, frame.marker) for r, b in zip(answers, share([len(r) for r in answers], br, frame.min_part))]
        parts = (
            [list(hint)]
            + [part for pair in zip(cut_p[:-1], cut_r) for part in pair]
            + [cut_p[-1], *cut_r[len(cut_p) - 1 :]]
        )
        body = [t for piece, part in zip(frame.pieces, parts) for t in (*piece, *part)] + list(frame.pieces[-1])
        return list(frame.special_head) + body + list(frame.special_tail)

    def encode_row(self, prompt: str, a: str, b: str, language: Any = None) -> Duo:
        """The two sequences of one pair (the prompt's texts are tokenized once for both)."""
        tokenized: dict[str, tuple[int, ...]] = {}

        def ids(text: str) -> tuple[int, ...]:
            if text not in tokenized:
                tokenized[text] = _ids(self.tokenizer, text)
            return tokenized[text]

        prompts = split_turns(prompt)
        out = []
        for own, other in ((a, b), (b, a)):
            responses = split_turns(own)
            turns = (prompts, responses) if len(prompts) == len(responses) > 1 else ([prompt], [own])
            hint = self._hint_ids(len(own), len(other), language)
            answers, reasoning = self._thought_through(list(turns[1]))
            frame = self.frame(len(turns[0]))
            written = [
                frame.as_template_writes(2 * t + 1 + k, text, opens=bool(t or k or not hint))
                for t, pair in enumerate(zip(turns[0], answers))
                for k, text in enumerate(pair)
            ]  # a hint opens the first prompt's message: the template's left strip reaches the hint, not the prompt
            think = ids(reasoning) if reasoning is not None else None
            out.append(self.sequence([ids(p) for p in written[0::2]], [ids(r) for r in written[1::2]], hint, think))
        return Duo(out[0], out[1])

    def _thought_through(self, answers: list[str]) -> tuple[list[str], Optional[str]]:
        """Answers that hold ``<think>...</think>`` as the chat template writes them (:class:`ThinkRules`): earlier
        answers without their reasoning, the last one's reasoning apart (for the template's think block)."""
        rules, reasoning = self.think, None
        if rules is None:
            return answers, None
        for i, text in enumerate(answers):
            last = i == len(answers) - 1
            if "</think>" in text and (rules.last if last else rules.earlier):
                thought, answers[i] = split_reasoning(text)
                reasoning = thought if last else reasoning
        return answers, reasoning

    def fingerprint(self) -> str:
        parts = [
            repr(self.frame(1)),
            repr(self.think),
            str(self.max_length),
            str(self.prompt_max_tokens),
            self.template,
            self.length_hint,
        ]
        return digest(["reward", vocabulary(self.tokenizer), *parts] + (["language_tag"] if self.language_tag else []))

    def encode(self, df: pd.DataFrame, cache_dir: str | None = None, desc: str = "tokenize") -> list[Duo]:
        """The two sequences of every row of ``df`` (same order); cached under ``cache_dir`` when given."""
        cache_file = cache_file_of(self.fingerprint(), df, self.language_tag, cache_dir)
        cached = read_cache(cache_file, len(df), desc)
        if cached is not None:
            return [Duo(a.tolist(), b.tolist()) for a, b in zip(cached["input_ids_a"], cached["input_ids_b"])]
        out: list[Duo] = []
        languages = df["language"] if self.language_tag and "language" in df else [None] * len(df)
        with Progress(len(df), desc, "rows") as bar:
            for prompt, a, b, language in zip(df["prompt"], df["response_a"], df["response_b"], languages):
                out.append(self.encode_row(prompt, a, b, language))
                bar.update(1)
        if cache_file is not None:
            table = {
                "input_ids_a": [np.asarray(d.a, dtype=np.int32) for d in out],
                "input_ids_b": [np.asarray(d.b, dtype=np.int32) for d in out],
            }
            write_parquet(cache_file, pd.DataFrame(table))
        return out
