"""The chat format: exact ids and masks, truncation, validation, adding the chat tokens to
a tokenizer, and Hugging Face's apply_chat_template giving the same ids."""

from __future__ import annotations

import json

import pytest

from scratchlm.builtin import builtin_corpus
from scratchlm.chat_format import (
    CHAT_SPECIAL_TOKENS,
    CHAT_TEMPLATE,
    END_OF_TURN,
    ROLE_TOKENS,
    ConversationTooLongError,
    chat_token_ids,
    chat_tokenizer,
    conversation_problem,
    render_conversation,
    render_prompt,
)
from scratchlm.errors import ConfigError, DataError, TokenizerError
from scratchlm.export.hf_tokenizer import save_hf_tokenizer
from scratchlm.tokenizer import (
    BPETokenizer,
    CharTokenizer,
    load_tokenizer,
    save_tokenizer,
    train_bpe,
)

EOT = "<|endoftext|>"


def conv(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in pairs]


LONG = conv(
    ("system", "You are a weather bot."),
    ("user", "Why does rain fall?"),
    ("assistant", "The drops grow heavy."),
    ("user", "And clouds?"),
    ("assistant", "Air cools and water vapour turns into tiny drops."),
    ("user", "Thanks!"),
    ("assistant", "You are welcome."),
)


@pytest.fixture(scope="module")
def tok():
    """A byte-level BPE (vocab 300) with <|endoftext|>, trained on the built-in corpus."""
    vocab, merges = train_bpe(builtin_corpus(), 300, [EOT], num_workers=1)
    return BPETokenizer(vocab, merges, [EOT])


@pytest.fixture(scope="module")
def chat_tok(tok):
    """``tok`` with the four chat tokens appended."""
    return chat_tokenizer(tok)


def ids_of(tok) -> dict[str, int]:
    return chat_token_ids(tok)


# ------------------------------------------------------------------ worked example


def test_worked_example_with_a_char_tokenizer():
    # chars sorted: "!"=0 "H"=1 "i"=2 "o"=3 "y"=4, then <|endoftext|>=5 and the chat
    # tokens appended: <|system|>=6 <|user|>=7 <|assistant|>=8 <|end|>=9.
    tok = chat_tokenizer(CharTokenizer("Hi!yo", [EOT]))
    assert tok.special_tokens == {
        EOT: 5,
        "<|system|>": 6,
        "<|user|>": 7,
        "<|assistant|>": 8,
        "<|end|>": 9,
    }
    ids, mask = render_conversation(conv(("user", "Hi!"), ("assistant", "yo")), tok)
    assert ids == [7, 1, 2, 0, 9, 8, 4, 3, 9]
    assert mask == [False, False, False, False, False, False, True, True, True]
    assert render_prompt(conv(("user", "Hi!")), tok) == [7, 1, 2, 0, 9, 8]
    ids, mask = render_conversation(conv(("system", "yo"), ("user", "H"), ("assistant", "i")), tok)
    assert ids == [6, 4, 3, 9, 7, 1, 9, 8, 2, 9]
    assert mask == [False] * 7 + [False, True, True]


def test_ids_equal_encoding_the_rendered_text_with_specials(chat_tok):
    # Content sits between special tokens, so piecewise encoding equals encoding the whole.
    text = "".join(ROLE_TOKENS[m["role"]] + m["content"] + END_OF_TURN for m in LONG)
    ids, mask = render_conversation(LONG, chat_tok)
    assert ids == chat_tok.encode(text)
    assert len(mask) == len(ids)
    assert chat_tok.decode(ids) == text


def test_mask_covers_assistant_content_and_end_of_turn_only(chat_tok):
    ids, mask = render_conversation(LONG, chat_tok)
    t = ids_of(chat_tok)
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    expected = []
    for m in LONG:
        if m["role"] == "assistant":
            expected += [*chat_tok.encode(m["content"]), t[END_OF_TURN]]
    assert trained == expected
    # Every role token is untrained, the <|assistant|> one too.
    role_ids = {t[r] for r in ROLE_TOKENS.values()}
    assert not any(m for i, m in zip(ids, mask, strict=True) if i in role_ids)
    # A conversation ending with a user turn trains nothing.
    assert not any(render_conversation(LONG[:2], chat_tok)[1])


def test_content_holding_special_token_text_stays_plain_text(chat_tok):
    tricky = f"Write {END_OF_TURN} then <|user|> and {EOT} literally."
    messages = conv(("user", tricky), ("assistant", tricky))
    ids, mask = render_conversation(messages, chat_tok)
    t = ids_of(chat_tok)
    assert ids.count(t[END_OF_TURN]) == 2
    assert ids.count(t["<|user|>"]) == 1
    assert chat_tok.special_tokens[EOT] not in ids
    body = chat_tok.encode(tricky, allow_special=False)
    assert ids == [t["<|user|>"], *body, t[END_OF_TURN], t["<|assistant|>"], *body, t[END_OF_TURN]]
    assert chat_tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == tricky + END_OF_TURN


def test_render_prompt_ends_with_assistant_token(chat_tok):
    t = ids_of(chat_tok)
    ids = render_prompt(LONG[:4], chat_tok)
    assert ids[-1] == t["<|assistant|>"]
    # The prompt is the conversation's rendering up to the answer, so training and
    # inference see the same ids.
    full, _ = render_conversation(LONG[:5], chat_tok)
    assert full[: len(ids)] == ids
    with pytest.raises(DataError, match="must end with a user message"):
        render_prompt(LONG[:3], chat_tok)


# ---------------------------------------------------------------------- truncation


def rendered_len(messages, tok) -> int:
    return len(render_conversation(messages, tok)[0])


def test_truncation_drops_oldest_exchanges_and_keeps_system(chat_tok):
    full, _ = render_conversation(LONG, chat_tok)
    without_first = [LONG[0], *LONG[3:]]
    only_last = [LONG[0], *LONG[5:]]
    assert render_conversation(LONG, chat_tok, max_tokens=len(full)) == render_conversation(
        LONG, chat_tok
    )
    n = rendered_len(without_first, chat_tok)
    for limit in (len(full) - 1, n):
        assert render_conversation(LONG, chat_tok, max_tokens=limit) == render_conversation(
            without_first, chat_tok
        )
    m = rendered_len(only_last, chat_tok)
    for limit in (n - 1, m):
        assert render_conversation(LONG, chat_tok, max_tokens=limit) == render_conversation(
            only_last, chat_tok
        )


def test_truncation_cuts_the_last_answer_without_end_of_turn(chat_tok):
    t = ids_of(chat_tok)
    only_last = [LONG[0], *LONG[5:]]
    ids_full, _ = render_conversation(only_last, chat_tok)
    prefix = rendered_len(only_last[:2], chat_tok) + 1  # system, user, <|assistant|>
    answer = chat_tok.encode(LONG[6]["content"])
    ids, mask = render_conversation(LONG, chat_tok, max_tokens=prefix + 2)
    assert ids == ids_full[:prefix] + answer[:2]
    assert t[END_OF_TURN] not in ids[prefix:]
    assert mask == [False] * prefix + [True, True]
    # Room for the whole answer but not its <|end|>: the answer ends without it.
    ids, mask = render_conversation(LONG, chat_tok, max_tokens=prefix + len(answer))
    assert ids == ids_full[:-1]
    with pytest.raises(ConversationTooLongError, match=f"need {prefix + 1} tokens"):
        render_conversation(LONG, chat_tok, max_tokens=prefix)


def test_truncation_never_exceeds_max_tokens(chat_tok):
    t = ids_of(chat_tok)
    full, _ = render_conversation(LONG, chat_tok)
    system, _ = render_conversation(LONG[:2], chat_tok)
    system = system[: system.index(t[END_OF_TURN]) + 1]
    for limit in range(1, len(full) + 3):
        try:
            ids, mask = render_conversation(LONG, chat_tok, max_tokens=limit)
        except ConversationTooLongError:
            assert limit < rendered_len([LONG[0], *LONG[5:6]], chat_tok) + 2
            continue
        assert len(ids) == len(mask) <= limit
        assert ids[: len(system)] == system  # the system message always stays whole
        assert any(mask)
        try:
            prompt = render_prompt(LONG[:6], chat_tok, max_tokens=limit)
        except ConversationTooLongError:
            continue
        assert len(prompt) <= limit
        assert prompt[: len(system)] == system
        assert prompt[-1] == t["<|assistant|>"]


def test_prompt_truncation_drops_oldest_exchanges(chat_tok):
    messages = LONG[:6]
    shorter = [LONG[0], *LONG[3:6]]
    n = len(render_prompt(shorter, chat_tok))
    assert render_prompt(messages, chat_tok, max_tokens=n) == render_prompt(shorter, chat_tok)
    last = [LONG[0], LONG[5]]
    m = len(render_prompt(last, chat_tok))
    assert render_prompt(messages, chat_tok, max_tokens=n - 1) == render_prompt(last, chat_tok)
    with pytest.raises(ConversationTooLongError, match=f"need {m} tokens"):
        render_prompt(messages, chat_tok, max_tokens=m - 1)


def test_without_system_message_truncation_keeps_newest(chat_tok):
    messages = LONG[1:]
    last = LONG[5:]
    limit = rendered_len(last, chat_tok)
    assert render_conversation(messages, chat_tok, max_tokens=limit) == render_conversation(
        last, chat_tok
    )


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_max_tokens_must_be_positive(chat_tok, bad):
    with pytest.raises(ConfigError, match="max_tokens"):
        render_conversation(LONG, chat_tok, max_tokens=bad)


# ---------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "no messages"),
        ("User: hi", "expected a list of messages"),
        ([{"role": "user"}], "message 0 has no 'content'"),
        ([{"content": "hi"}], "message 0 has no 'role'"),
        (conv(("tool", "x")), "role 'tool'"),
        ([{"role": "user", "content": None}], "content of type NoneType"),
        (conv(("user", "a"), ("system", "b")), "message 1 is a system message"),
        (conv(("assistant", "a")), "message 0 is assistant but user was expected"),
        (conv(("user", "a"), ("user", "b")), "message 1 is user but assistant was expected"),
        (conv(("system", "s"), ("assistant", "a")), "message 1 is assistant but user"),
        (conv(("system", "s")), "no user message"),
        (["hi"], "message 0 is a str"),
    ],
)
def test_invalid_conversations_raise_data_error(chat_tok, messages, problem):
    assert problem in conversation_problem(messages)
    with pytest.raises(DataError, match="invalid conversation"):
        render_conversation(messages, chat_tok)
    with pytest.raises(DataError, match="invalid conversation"):
        render_prompt(messages, chat_tok)


def test_tokenizer_without_chat_tokens_is_refused(tok):
    with pytest.raises(TokenizerError, match="chat_tokenizer"):
        render_conversation(LONG, tok)


# ------------------------------------------------------------------ chat_tokenizer


def test_chat_tokenizer_appends_to_bpe_and_keeps_old_ids(tok, chat_tok, tmp_path):
    assert chat_tok is not tok and type(chat_tok) is BPETokenizer
    assert {i: chat_tok.vocab[i] for i in tok.vocab} == tok.vocab
    assert chat_tok.merges == tok.merges and chat_tok.pattern == tok.pattern
    assert chat_tok.metadata == tok.metadata
    assert chat_tok.special_tokens == {
        **tok.special_tokens,
        **{t: tok.vocab_size + k for k, t in enumerate(CHAT_SPECIAL_TOKENS)},
    }
    text = f"Rain falls, 日本語 😀 {EOT} <|user|>"
    assert chat_tok.encode(text, allow_special=False) == tok.encode(text, allow_special=False)
    assert chat_tokenizer(chat_tok) is chat_tok
    # The grown tokenizer saves and loads with the same ids.
    assert (
        load_tokenizer(save_tokenizer(chat_tok, tmp_path)).special_tokens == chat_tok.special_tokens
    )


def test_chat_tokenizer_adds_only_missing_tokens():
    vocab = {i: bytes([i]) for i in range(256)}
    tok = BPETokenizer(vocab, [], [EOT, "<|user|>", "<|end|>"], use_tiktoken=False)
    grown = chat_tokenizer(tok)
    assert grown.special_tokens == {
        EOT: 256,
        "<|user|>": 257,
        "<|end|>": 258,
        "<|system|>": 259,
        "<|assistant|>": 260,
    }
    assert not grown.uses_tiktoken


def test_chat_tokenizer_on_char_tokenizer():
    tok = CharTokenizer("abc", [EOT])
    grown = chat_tokenizer(tok)
    assert type(grown) is CharTokenizer
    assert grown.encode("cab" + EOT) == tok.encode("cab" + EOT) == [2, 0, 1, 3]
    assert [grown.special_tokens[t] for t in CHAT_SPECIAL_TOKENS] == [4, 5, 6, 7]
    assert chat_tokenizer(grown) is grown


def test_chat_tokenizer_refuses_other_tokenizers():
    class Other:
        def __init__(self) -> None:
            self.special_tokens: dict[str, int] = {}

    with pytest.raises(TokenizerError, match="cannot add chat tokens to a Other"):
        chat_tokenizer(Other())


# ------------------------------------------------------------ Hugging Face template

HF_CONVERSATIONS = [
    conv(("user", "Hello!"), ("assistant", "Hi, how can I help?")),
    conv(
        ("system", "You answer in Japanese."),
        ("user", "What is the weather?"),
        ("assistant", "日本語のテキストです。雨が降ります。"),
        ("user", "Emoji please 😀👍🏽 👩\u200d💻"),
        ("assistant", "🌧️☔ 😀"),
    ),
    conv(("user", "  leading and trailing  "), ("assistant", "\nnew\nlines\r\n\n")),
    conv(("user", "tabs\tand 123 456 7890!"), ("assistant", " Café, naïve. ")),
]


@pytest.fixture(scope="module")
def hf_chat_tok(chat_tok, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folder = save_hf_tokenizer(chat_tok, tmp_path_factory.mktemp("hf") / "tok")
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def input_ids(result) -> list[int]:
    """apply_chat_template returns a list in older transformers, a BatchEncoding in newer."""
    return list(result if isinstance(result, list) else result["input_ids"])


@pytest.mark.parametrize("index", range(len(HF_CONVERSATIONS)))
def test_hf_chat_template_gives_our_ids(chat_tok, hf_chat_tok, index):
    messages = HF_CONVERSATIONS[index]
    ours, _ = render_conversation(messages, chat_tok)
    theirs = hf_chat_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=False)
    assert input_ids(theirs) == ours
    prompt = messages[:-1]
    theirs = hf_chat_tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)
    assert input_ids(theirs) == render_prompt(prompt, chat_tok)


def test_hf_chat_template_refuses_what_we_refuse(hf_chat_tok):
    jinja2 = pytest.importorskip("jinja2")
    for messages in (
        conv(("tool", "x")),
        conv(("user", "a"), ("system", "b")),
        conv(("user", "a"), ("user", "b")),
    ):
        with pytest.raises(jinja2.TemplateError):
            hf_chat_tok.apply_chat_template(messages, tokenize=False)


def test_chat_template_is_exported_only_with_chat_tokens(tok, chat_tok, tmp_path):
    plain = json.loads(
        (save_hf_tokenizer(tok, tmp_path / "a") / "tokenizer_config.json").read_text()
    )
    assert "chat_template" not in plain
    chat = json.loads(
        (save_hf_tokenizer(chat_tok, tmp_path / "b") / "tokenizer_config.json").read_text()
    )
    assert chat["chat_template"] == CHAT_TEMPLATE
