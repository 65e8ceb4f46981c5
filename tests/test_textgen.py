"""The text layer (``scratchlm.textgen``): stop strings across token boundaries, UTF-8
safe streaming, and ``stream``/``generate`` around the id engine.

TextStream is driven directly with tokens of a hand-built byte-level vocabulary; the
expected texts come from plain ``str.find`` and ``bytes.decode`` on the whole text.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm import textgen
from scratchlm.config import SampleConfig, preset
from scratchlm.errors import ConfigError, ScratchLMError
from scratchlm.generate import generate_ids
from scratchlm.model import TransformerLM
from scratchlm.sampling import make_generator
from scratchlm.textgen import TextStream, generate, stream
from scratchlm.tokenizer import BPETokenizer, train_bpe

EOT = "<|endoftext|>"

# Multi-byte tokens on top of the 256 single bytes: stop-string pieces, text around a
# stop inside one token, and tokens that cut UTF-8 characters in the middle.
EXTRA_TOKENS = [
    b"EN",
    b"D",
    b"heEND",  # text, then a whole stop string
    b"ENDtail",  # a stop string, then text
    b"xSTOPyEND",
    b"xENDySTOP",
    "日本語🎉".encode()[:4],  # 日 + the first byte of 本
    "日本語🎉".encode()[4:5],
    "日本語🎉".encode()[5:8],  # the end of 本 + two bytes of 語
    "日本語🎉".encode()[8:10],  # the end of 語 + the first byte of 🎉
    "日本語🎉".encode()[10:],
]


def byte_tokenizer(special_tokens: Sequence[str] = ()) -> BPETokenizer:
    vocab = {i: bytes([i]) for i in range(256)}
    vocab.update({256 + j: t for j, t in enumerate(EXTRA_TOKENS)})
    return BPETokenizer(vocab, [], special_tokens, use_tiktoken=False)


TOK = byte_tokenizer()


def tid(token: bytes | str) -> int:
    return TOK.token_to_id(token.encode() if isinstance(token, str) else token)


def byte_ids(text: str) -> list[int]:
    """One single-byte token per UTF-8 byte of ``text``."""
    return [tid(bytes([b])) for b in text.encode()]


def push_all(text_stream: TextStream, ids: Sequence[int]) -> list[str]:
    """Every piece returned by push, then by finish (empty ones included)."""
    return [text_stream.push(i) for i in ids] + [text_stream.finish()]


# --- stop strings ------------------------------------------------------------------------


def test_stop_string_spread_over_tokens_is_left_out() -> None:
    s = TextStream(TOK, ["END"])
    assert s.push(tid("a")) == "a"
    assert s.push(tid("b")) == "b"
    assert s.push(tid("E")) == ""  # could be the start of END: held back
    assert s.push(tid("N")) == ""
    assert s.push(tid("D")) == ""
    assert s.stopped
    assert s.push(tid("z")) == ""  # text after a stop is discarded
    assert s.finish() == ""
    assert s.text == "ab"


def test_stop_string_across_multi_byte_tokens() -> None:
    s = TextStream(TOK, ["END"])
    pieces = push_all(s, [tid("a"), tid(b"EN"), tid(b"D"), tid("b")])
    assert "".join(pieces) == "a" and s.stopped


def test_stop_string_inside_one_token_with_text_before_it() -> None:
    s = TextStream(TOK, ["END"])
    assert s.push(tid("-")) == "-"
    assert s.push(tid(b"heEND")) == "he"
    assert s.stopped and s.finish() == "" and s.text == "-he"


def test_text_after_a_stop_inside_the_same_token_is_discarded() -> None:
    s = TextStream(TOK, ["END"])
    assert "".join(push_all(s, [tid("q"), tid(b"ENDtail"), tid("r")])) == "q"


def test_a_false_stop_prefix_is_released_later_nothing_lost() -> None:
    s = TextStream(TOK, ["END"])
    assert s.push(tid(b"EN")) == ""
    assert s.push(tid("X")) == "ENX"
    assert s.push(tid("E")) == ""
    assert s.push(tid("E")) == "E"  # "EE": only the last E can still start END
    assert s.push(tid("N")) == ""
    assert s.finish() == "EN"  # no more tokens: what was held back comes out
    assert not s.stopped and s.text == "ENXEEN"


@pytest.mark.parametrize("stops", [["END", "STOP"], ["STOP", "END"]])
@pytest.mark.parametrize(
    "tokens, expected",
    [
        ([b"xSTOPyEND"], "x"),
        ([b"xENDySTOP"], "x"),
        (list("xENDySTOP"), "x"),
        (list("xSTOPyEND"), "x"),
        (list("STENDOP"), "ST"),
        (list("ENSTOP"), "EN"),
    ],
)
def test_several_stop_strings_earliest_wins(stops, tokens, expected) -> None:
    s = TextStream(TOK, stops)
    assert "".join(push_all(s, [tid(t) for t in tokens])) == expected
    assert s.stopped


def test_empty_stop_strings_are_ignored() -> None:
    s = TextStream(TOK, ["", "END"])
    assert "".join(push_all(s, byte_ids("abc"))) == "abc"


def reference_stop(text: str, stops: Sequence[str]) -> tuple[str, list[int]]:
    """What a character-by-character stream of ``text`` should produce: the text up to
    the stop that completes first (earliest start among those complete at that point),
    and after each character how many characters are safe to show (everything except
    the longest tail that is a proper prefix of a stop)."""
    stops = [s for s in stops if s]
    shown: list[int] = []
    for n in range(1, len(text) + 1):
        hits = [i for i in (text[:n].find(s) for s in stops) if i >= 0]
        if hits:
            shown.append(min(hits))
            return text[: min(hits)], shown
        held = [k for s in stops for k in range(1, min(len(s), n + 1)) if text[:n].endswith(s[:k])]
        shown.append(n - max(held, default=0))
    return text, shown


@settings(max_examples=300)
@given(
    text=st.text(alphabet="ABCé日🎉", max_size=25),
    stops=st.lists(st.text(alphabet="ABCé日🎉", min_size=1, max_size=4), max_size=3),
)
def test_stop_strings_property(text: str, stops: list[str]) -> None:
    expected, shown = reference_stop(text, stops)
    s = TextStream(TOK, stops)
    out = ""
    for n, ch in enumerate(text):
        for b in byte_ids(ch):
            out += s.push(b)
        if n < len(shown):
            assert out == text[: shown[n]], (n, text[: n + 1])
    out += s.finish()
    assert out == expected
    assert s.stopped == any(stop in text for stop in stops)


# --- UTF-8 -------------------------------------------------------------------------------


def test_streaming_one_byte_at_a_time_never_splits_a_character() -> None:
    text = "日本語🎉"
    s = TextStream(TOK)
    pieces = push_all(s, byte_ids(text))
    assert [p for p in pieces if p] == ["日", "本", "語", "🎉"]
    assert "".join(pieces) == text


def test_tokens_that_cut_characters_in_the_middle() -> None:
    s = TextStream(TOK)
    ids = [tid(t) for t in EXTRA_TOKENS[6:]]
    pieces = push_all(s, ids)
    assert pieces == ["日", "", "本", "語", "🎉", ""]


def test_stop_string_made_of_multi_byte_characters() -> None:
    s = TextStream(TOK, ["語🎉"])
    pieces = push_all(s, [tid(t) for t in EXTRA_TOKENS[6:]])
    assert "".join(pieces) == "日本" and s.stopped


def test_incomplete_character_becomes_replacement_only_at_finish() -> None:
    s = TextStream(TOK)
    assert s.push(tid("a")) == "a"
    for b in "日".encode()[:2]:
        assert s.push(tid(bytes([b]))) == ""
    assert s.finish() == "\ufffd"


def test_invalid_bytes_are_replaced_and_nothing_else_is_lost() -> None:
    s = TextStream(TOK)
    ids = [tid("a"), tid(b"\xff"), tid("b"), tid(b"\xe6"), tid("c"), tid(b"\x80")]
    assert "".join(push_all(s, ids)) == "a\ufffdb\ufffdc\ufffd"


class ChunkTokenizer:
    """A stand-in tokenizer whose token i is ``chunks[i]``: any way of cutting bytes."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self.chunks = list(chunks)

    def id_to_token(self, token_id: int) -> bytes:
        return self.chunks[token_id]


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=200)
@given(text=st.text(max_size=30), cuts=st.lists(st.integers(0, 200), max_size=30))
def test_any_cut_of_valid_text_streams_whole_characters(text: str, cuts: list[int]) -> None:
    data = text.encode()
    chunks = cut(data, cuts)
    s = TextStream(ChunkTokenizer(chunks))
    out, consumed = "", 0
    for i, chunk in enumerate(chunks):
        piece = s.push(i)
        consumed += len(chunk)
        out += piece
        # Exactly the characters whose bytes have all arrived.
        assert out == data[:consumed].decode("utf-8", errors="ignore")
        assert "\ufffd" not in piece or "\ufffd" in text
    out += s.finish()
    assert out == text


@settings(max_examples=200)
@given(data=st.binary(max_size=40), cuts=st.lists(st.integers(0, 200), max_size=30))
def test_any_bytes_decode_like_a_one_shot_replace(data: bytes, cuts: list[int]) -> None:
    chunks = cut(data, cuts)
    s = TextStream(ChunkTokenizer(chunks))
    assert "".join(push_all(s, range(len(chunks)))) == data.decode("utf-8", errors="replace")


# --- stream / generate with a model ------------------------------------------------------

CORPUS = (
    "the cat sat on the mat. the dog sat on the log.\n"
    "a cat and a dog met a bird; the bird sang.\n"
    "日本語のテキスト and emoji 🎉 too.\n"
)


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> BPETokenizer:
    path = tmp_path_factory.mktemp("textgen") / "corpus.txt"
    path.write_text(CORPUS * 20, encoding="utf-8")
    vocab, merges = train_bpe(path, 300, [EOT], num_workers=1)
    return BPETokenizer(vocab, merges, [EOT], use_tiktoken=False)


@pytest.fixture
def model(bpe) -> TransformerLM:
    torch.manual_seed(0)
    config = preset("tiny", vocab_size=bpe.vocab_size, context_length=48, init_std=0.3)
    return TransformerLM(config).eval()


@torch.no_grad()
def reference_greedy_ids(model, prompt: Sequence[int], n: int, stop: int | None) -> list[int]:
    """Greedy ids by full uncached forward passes, ending before ``stop``."""
    seq, out = list(prompt), []
    for _ in range(n):
        token = int(model(torch.tensor([seq]))[0, -1].argmax())
        if token == stop:
            break
        out.append(token)
        seq.append(token)
    return out


def test_stream_joined_equals_generate(model, bpe) -> None:
    kwargs = dict(temperature=1.0, top_k=80, seed=7, max_new_tokens=24)
    pieces = list(stream(model, bpe, "the cat", **kwargs))
    assert all(pieces)
    assert "".join(pieces) == generate(model, bpe, "the cat", **kwargs)
    # ...and equals the engine's ids for the same seed, decoded in one go.
    ids = []
    for (token,) in generate_ids(
        model,
        [bpe.encode("the cat")],
        SampleConfig(temperature=1.0, top_k=80, max_new_tokens=24),
        stop_ids=[bpe.special_tokens[EOT]],
        generator=make_generator(7),
    ):
        if token is None:
            break
        ids.append(token)
    assert "".join(pieces) == bpe.decode(ids)


def test_seed_controls_the_text(model, bpe) -> None:
    kwargs = dict(temperature=1.5, max_new_tokens=30, stop_ids=[])
    a = generate(model, bpe, "a dog", seed=1, **kwargs)
    assert a == generate(model, bpe, "a dog", seed=1, **kwargs)
    assert a != generate(model, bpe, "a dog", seed=2, **kwargs)


PROMPTS = ["the", "a cat and a dog met a bird", "日本", "x"]


def test_greedy_text_equals_the_reference(model, bpe) -> None:
    eot = bpe.special_tokens[EOT]
    for prompt in PROMPTS:
        expected = bpe.decode(reference_greedy_ids(model, bpe.encode(prompt), 16, eot))
        assert generate(model, bpe, prompt, temperature=0, max_new_tokens=16) == expected


def test_list_of_prompts_equals_each_alone(model, bpe) -> None:
    kwargs = dict(temperature=0, max_new_tokens=16)
    alone = [generate(model, bpe, p, **kwargs) for p in PROMPTS]
    assert generate(model, bpe, PROMPTS, **kwargs) == alone
    assert len(set(alone)) == len(alone)

    # With a stop string taken from the middle of one row's text: that row ends early,
    # the others go on, each cut at its own first occurrence.
    row = max(alone, key=len)
    stop = next(
        row[i : i + 2]
        for i in range(2, len(row) - 1)
        if "\ufffd" not in row[i : i + 2] and row.find(row[i : i + 2]) == i
    )
    expected = [a[: a.find(stop)] if stop in a else a for a in alone]
    assert generate(model, bpe, PROMPTS, stop=[stop], **kwargs) == expected
    assert [generate(model, bpe, p, stop=[stop], **kwargs) for p in PROMPTS] == expected
    assert any(e == a for e, a in zip(expected, alone, strict=True))  # some row went on


def test_stream_rows_yields_every_row_each_step_and_closes_the_engine(
    model, bpe, monkeypatch
) -> None:
    eot = bpe.special_tokens[EOT]
    settings = SampleConfig(temperature=0, max_new_tokens=12)
    prompts = [bpe.encode(p) for p in PROMPTS]
    engines = []

    def engine(*args, **kwargs):
        engines.append(generate_ids(*args, **kwargs))
        return engines[-1]

    monkeypatch.setattr(textgen, "generate_ids", engine)
    steps = list(textgen.stream_rows(model, bpe, prompts, settings, stop_ids=[eot]))
    # One list of B pieces per engine step (at most the budget), then the held-back rests.
    assert 2 <= len(steps) <= settings.max_new_tokens + 1
    assert all(len(pieces) == len(PROMPTS) for pieces in steps)
    for row, ids in zip(zip(*steps, strict=True), prompts, strict=True):
        assert "".join(row) == bpe.decode(reference_greedy_ids(model, ids, 12, eot))

    # Abandoned after one step, the loop closes the engine at once (its KV cache goes
    # and the model leaves inference mode), not when the generator is collected.
    rows = textgen.stream_rows(model, bpe, prompts, settings, stop_ids=[eot])
    next(rows)
    assert engines[-1].gi_frame is not None
    rows.close()
    assert engines[-1].gi_frame is None


def test_sample_config_and_overrides(model, bpe) -> None:
    eot = bpe.special_tokens[EOT]
    expected = bpe.decode(reference_greedy_ids(model, bpe.encode("the dog"), 3, eot))
    base = SampleConfig(temperature=0.0, max_new_tokens=50)
    assert generate(model, bpe, "the dog", base, max_new_tokens=3) == expected
    assert generate(model, bpe, "the dog", SampleConfig(temperature=0.0, max_new_tokens=3)) == (
        expected
    )
    assert base.max_new_tokens == 50  # the caller's config is not changed


def favour(model: TransformerLM, token: int):
    """Make ``token`` the argmax at every step (a forward hook adds 100 to its logit)."""
    bias = torch.zeros(model.config.vocab_size)
    bias[token] = 100.0
    return model.register_forward_hook(lambda module, args, out: out + bias)


def test_endoftext_is_a_default_stop_id(model, bpe) -> None:
    eot = bpe.special_tokens[EOT]
    handle = favour(model, eot)
    try:
        assert generate(model, bpe, "the cat", temperature=0, max_new_tokens=5) == ""
        assert list(stream(model, bpe, "the cat", temperature=0, max_new_tokens=5)) == []
        assert generate(model, bpe, ["the", "cat"], temperature=0, max_new_tokens=5) == ["", ""]
        # Sampling too: it is the only token with any probability left.
        assert generate(model, bpe, "the cat", seed=0, max_new_tokens=5) == ""
        # Explicit stop ids replace the default.
        text = generate(model, bpe, "the cat", temperature=0, max_new_tokens=3, stop_ids=[])
        assert text == EOT * 3
    finally:
        handle.remove()


def test_stop_id_given_by_the_caller(model, bpe) -> None:
    eot = bpe.special_tokens[EOT]
    tokens = reference_greedy_ids(model, bpe.encode("the"), 10, eot)
    stop = tokens[3]
    expected = bpe.decode(tokens[: tokens.index(stop)])
    assert generate(model, bpe, "the", temperature=0, max_new_tokens=10, stop_ids=[stop]) == (
        expected
    )


def test_empty_prompt_starts_from_endoftext(model, bpe) -> None:
    eot = bpe.special_tokens[EOT]
    seen = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(args[0].tolist()))
    try:
        text = generate(model, bpe, "", temperature=0, max_new_tokens=8, stop_ids=[])
    finally:
        handle.remove()
    assert seen[0] == [[eot]]
    with torch.no_grad():
        seq = [eot]
        for _ in range(8):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert text == bpe.decode(seq[1:])


def test_empty_prompt_without_endoftext_raises(model) -> None:
    tokenizer = byte_tokenizer()
    assert EOT not in tokenizer.special_tokens
    with pytest.raises(ScratchLMError, match="empty"):
        generate(model, tokenizer, "", temperature=0, max_new_tokens=3)


def test_long_prompt_truncated_or_refused(model, bpe) -> None:
    prompt = "the cat sat on the mat. " * 10
    n = len(bpe.encode(prompt))
    assert n > 48
    assert isinstance(generate(model, bpe, prompt, temperature=0, max_new_tokens=2), str)
    with pytest.raises(ScratchLMError, match=str(n)):
        generate(model, bpe, prompt, temperature=0, max_new_tokens=2, truncate=False)


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -1},
        {"top_p": 0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"min_p": 1.0},
        {"max_new_tokens": -1},
        {"temprature": 0.5},  # a misspelt setting
    ],
)
def test_invalid_settings_raise_before_any_work(model, bpe, bad, monkeypatch) -> None:
    calls = []

    def engine(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the engine must not start")

    monkeypatch.setattr(textgen, "generate_ids", engine)
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(args))
    try:
        with pytest.raises(ConfigError):
            generate(model, bpe, "the cat", **bad)
        with pytest.raises(ConfigError):
            generate(model, bpe, ["the cat", "a dog"], **bad)
        with pytest.raises(ConfigError):
            next(stream(model, bpe, "the cat", **bad))
    finally:
        handle.remove()
    assert calls == []
