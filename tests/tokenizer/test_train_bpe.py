"""BPE training: a worked example checked by hand, the incremental merge loop against the
readable one, determinism across workers and chunk sizes, and every bad input."""

from __future__ import annotations

import itertools
import logging

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import scratchlm.tokenizer.corpus as corpus_mod
from scratchlm.errors import ConfigError, DataError, ScratchLMError
from scratchlm.tokenizer import (
    GPT2_PATTERN,
    GPT4_PATTERN,
    BPETokenizer,
    merge_pairs,
    merge_pairs_reference,
    train_bpe,
)

EOT = "<|endoftext|>"
EOT2 = "<|endoftext|><|endoftext|>"

# ----------------------------------------------------------------------------------------
# Worked example, by hand.
#
# Corpus: "low low low low low lower lower newest newest newest newest newest newest
#          widest widest widest"
# GPT-2 pre-tokens (a word keeps its leading space):
#   "low" x1, " low" x4, " lower" x2, " newest" x6, " widest" x3
#
# Initial pair counts (each pre-token's pairs times its count):
#   (' ','l') 6   ('l','o') 7   ('o','w') 7   ('w','e') 8   ('e','r') 2
#   (' ','n') 6   ('n','e') 6   ('e','w') 6   ('e','s') 9   ('s','t') 9
#   (' ','w') 3   ('w','i') 3   ('i','d') 3   ('d','e') 3
#  1. max 9: ('e','s') vs ('s','t') -> greatest tuple is ('s','t')            -> "st"   256
#  2. ('e','st') = 6 + 3 = 9 is now the only 9                               -> "est"  257
#     (' newest' is now [ ,n,e,w,est]: ('w','e') drops to 2, only from " lower")
#  3. max 7: ('l','o') vs ('o','w') -> ('o','w')                              -> "ow"   258
#  4. ('l','ow') = 1 + 4 + 2 = 7                                              -> "low"  259
#  5. max 6: (' ','low') (' ','n') ('n','e') ('e','w') ('w','est');
#     greatest first element is 'w' -> ('w','est')                            -> "west" 260
#  6. left at 6: (' ','low') (' ','n') ('n','e') ('e','west') -> ('n','e')    -> "ne"   261
#  7. left at 6: (' ','low') (' ','ne') ('ne','west') -> ('ne','west')        -> "newest" 262
#  8. left at 6: (' ','low') (' ','newest'); "newest" > "low"                 -> " newest" 263
#  9. (' ','low') 6                                                           -> " low" 264
#     left: (' low','e') 2 ('e','r') 2 (' ','w') 3 ('w','i') 3 ('i','d') 3 ('d','est') 3
# 10. max 3: greatest first element 'w' -> ('w','i')                          -> "wi"   265
# 11. (' ','wi') ('wi','d') ('d','est') all 3 -> ('wi','d')                   -> "wid"  266
# 12. (' ','wid') ('wid','est') -> ('wid','est')                              -> "widest" 267
# 13. (' ','widest') 3                                                        -> " widest" 268
# 14. (' low','e') 2 vs ('e','r') 2 -> 'e' > ' ' -> ('e','r')                 -> "er"   269
# 15. (' low','er') 2                                                         -> " lower" 270
# Then every pre-token is a single token: no pairs are left after 15 merges.
# With the special token <|endoftext|> and vocab_size 272 it gets id 271.
WORKED_MERGES = [
    (b"s", b"t"),
    (b"e", b"st"),
    (b"o", b"w"),
    (b"l", b"ow"),
    (b"w", b"est"),
    (b"n", b"e"),
    (b"ne", b"west"),
    (b" ", b"newest"),
    (b" ", b"low"),
    (b"w", b"i"),
    (b"wi", b"d"),
    (b"wid", b"est"),
    (b" ", b"widest"),
    (b"e", b"r"),
    (b" low", b"er"),
]
WORKED_TOKENS = {
    256: b"st",
    257: b"est",
    258: b"ow",
    259: b"low",
    260: b"west",
    261: b"ne",
    262: b"newest",
    263: b" newest",
    264: b" low",
    265: b"wi",
    266: b"wid",
    267: b"widest",
    268: b" widest",
    269: b"er",
    270: b" lower",
    271: b"<|endoftext|>",
}


def test_worked_example_merges_and_vocab(worked_corpus):
    vocab, merges = train_bpe(worked_corpus, 272, [EOT], num_workers=1)
    assert merges == WORKED_MERGES
    assert len(vocab) == 272
    assert {i: vocab[i] for i in range(256)} == {i: bytes([i]) for i in range(256)}
    assert {i: vocab[i] for i in range(256, 272)} == WORKED_TOKENS


def test_worked_example_fewer_merges_is_a_prefix(worked_corpus):
    vocab, merges = train_bpe(worked_corpus, 256 + 5 + 1, [EOT], num_workers=1)
    assert merges == WORKED_MERGES[:5]
    assert vocab[261] == b"<|endoftext|>"


@pytest.mark.parametrize("use_tiktoken", [False, None])
def test_worked_example_encode(worked_corpus, use_tiktoken):
    # "lowest newer wider low<|endoftext|> widest", merges applied lowest rank first
    # (rank = position in WORKED_MERGES, 0-based):
    #   "lowest": (s,t)0 -> (e,st)1 -> (o,w)2 -> (l,ow)3; (low,est) is no merge
    #             -> [low, est] = [259, 257]   (not "west": (w,est)4 comes after (o,w)2)
    #   " newer": (n,e)5 -> (e,r)13 -> [" ", ne, w, er] = [32, 261, 119, 269]
    #   " wider": (w,i)9 -> (wi,d)10 -> (e,r)13 -> [" ", wid, er] = [32, 266, 269]
    #   " low":   (o,w)2 -> (l,ow)3 -> (" ",low)8 -> [" low"] = [264]
    #   "<|endoftext|>" -> 271;  " widest" -> ... -> (" ",widest)12 -> [268]
    vocab, merges = train_bpe(worked_corpus, 272, [EOT], num_workers=1)
    tok = BPETokenizer(vocab, merges, [EOT], use_tiktoken=use_tiktoken)
    text = "lowest newer wider low<|endoftext|> widest"
    expected = [259, 257, 32, 261, 119, 269, 32, 266, 269, 264, 271, 268]
    assert tok.encode(text) == expected
    assert tok.decode(expected) == text


def test_worked_example_runs_out_of_pairs(worked_corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="scratchlm"):
        vocab, merges = train_bpe(worked_corpus, 400, [EOT], num_workers=1)
    assert merges == WORKED_MERGES
    assert len(vocab) == 256 + 15 + 1
    assert vocab[271] == b"<|endoftext|>"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "15 merges" in message and "272" in message and "400" in message


# ------------------------------------------------------------------ the merge loops


@pytest.mark.parametrize("merge", [merge_pairs, merge_pairs_reference])
@pytest.mark.parametrize(
    ("word_counts", "num_merges", "expected"),
    [
        # One tie at count 1: the greatest pair (c, d) goes first.
        ({b"ab": 1, b"cd": 1}, 5, [(b"c", b"d"), (b"a", b"b")]),
        # "aaaa" holds (a, a) three times (overlapping); then [aa, aa] once.
        ({b"aaaa": 1}, 5, [(b"a", b"a"), (b"aa", b"aa")]),
        # "aaa" x2: (a, a) 4 times; merging left to right leaves [aa, a].
        ({b"aaa": 2}, 5, [(b"a", b"a"), (b"aa", b"a")]),
        # After (b, c): (a, bc) and (a, b) tie at 1; b"bc" > b"b" (a prefix sorts first).
        (
            {b"bc": 10, b"abc": 1, b"ab": 1},
            5,
            [(b"b", b"c"), (b"a", b"bc"), (b"a", b"b")],
        ),
        # Counts are weighted by word frequency: (x, y) 3 beats (a, b) 2.
        ({b"ab": 2, b"xy": 3}, 1, [(b"x", b"y")]),
        # Asking for zero merges, or words of one byte: nothing to merge.
        ({b"abc": 4}, 0, []),
        ({b"a": 4, b"b": 1}, 3, []),
    ],
)
def test_merge_loops_by_hand(merge, word_counts, num_merges, expected):
    assert merge(word_counts, num_merges) == expected


small_words = st.lists(st.sampled_from(b"ab \xff"), min_size=1, max_size=10).map(bytes)
any_words = st.binary(min_size=1, max_size=8)


@given(
    word_counts=st.dictionaries(
        st.one_of(small_words, any_words), st.integers(1, 20), min_size=1, max_size=12
    ),
    num_merges=st.integers(0, 40),
)
@example(word_counts={b"aaaaaa": 3, b"aaa": 2, b"ba": 5}, num_merges=10)
@example(word_counts={b"abab": 1, b"baba": 1, b"aabb": 1}, num_merges=10)
@example(word_counts={b"\xff\xfe": 2, b"\xfe\xff": 2, b"\xff": 9}, num_merges=4)
def test_merge_pairs_equals_reference(word_counts, num_merges):
    assert merge_pairs(word_counts, num_merges) == merge_pairs_reference(word_counts, num_merges)


# ------------------------------------------------------- whole training, independently


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, GPT4_PATTERN], ids=["gpt2", "gpt4"])
def test_train_equals_reference_on_mixed_corpus(mixed_corpus, reference_counts, pattern):
    text = mixed_corpus.read_bytes().decode("utf-8")
    counts = reference_counts(text, [EOT, EOT2], pattern)
    num_merges = 150
    expected = merge_pairs_reference({w.encode(): c for w, c in counts.items()}, num_merges)
    vocab, merges = train_bpe(mixed_corpus, 256 + num_merges + 2, [EOT, EOT2], pattern=pattern)
    assert merges == expected
    assert [vocab[256 + k] for k in range(num_merges)] == [a + b for a, b in expected]
    assert vocab[256 + num_merges] == EOT.encode()
    assert vocab[256 + num_merges + 1] == EOT2.encode()


def test_pattern_name_is_accepted(mixed_corpus):
    by_name = train_bpe(mixed_corpus, 320, [EOT], pattern="gpt4", num_workers=1)
    by_regex = train_bpe(mixed_corpus, 320, [EOT], pattern=GPT4_PATTERN, num_workers=1)
    assert by_name == by_regex
    # The two patterns do differ on this corpus (the GPT-4 one splits digits in threes).
    assert by_name != train_bpe(mixed_corpus, 320, [EOT], num_workers=1)


def test_merges_stay_inside_pretokens(mixed_corpus, reference_counts):
    text = mixed_corpus.read_bytes().decode("utf-8")
    pretokens = [w.encode() for w in reference_counts(text, [EOT, EOT2], GPT2_PATTERN)]
    # Train until the corpus runs out of pairs (288 merges here), so all merges are used.
    vocab, merges = train_bpe(mixed_corpus, 700, [EOT, EOT2], num_workers=1)
    assert len(vocab) < 700
    for a, b in merges:
        token = a + b
        assert any(token in p for p in pretokens), token
        # GPT-2 pre-tokens never hold a letter followed by a space, nor a special token.
        text_of = token.decode("utf-8", errors="replace")
        assert not any(c.isalpha() and d == " " for c, d in itertools.pairwise(text_of)), token
        assert b"<|" not in token and b"|>" not in token and b"endoftext" not in token
    # Out of pairs means every pre-token became one token; encoding one alone agrees.
    tok = BPETokenizer(vocab, merges, [EOT, EOT2], use_tiktoken=False)
    for word in set(pretokens):
        assert len(tok.encode(word.decode())) == 1, word


def test_duplicate_special_tokens_count_once(worked_corpus):
    vocab, merges = train_bpe(worked_corpus, 272, [EOT, EOT], num_workers=1)
    assert merges == WORKED_MERGES
    assert [t for t in vocab.values() if t == EOT.encode()] == [EOT.encode()]


def test_smallest_vocab_has_no_merges(worked_corpus):
    vocab, merges = train_bpe(worked_corpus, 257, [EOT], num_workers=1)
    assert merges == []
    assert len(vocab) == 257 and vocab[256] == EOT.encode()


# ------------------------------------------------------------------------ determinism


def test_same_merges_for_any_workers_and_chunk_size(mixed_corpus, monkeypatch):
    baseline = train_bpe(mixed_corpus, 500, [EOT, EOT2], num_workers=1)
    assert train_bpe(mixed_corpus, 500, [EOT, EOT2], num_workers=1, chunk_size=64) == baseline
    assert train_bpe(mixed_corpus, 500, [EOT, EOT2], num_workers=1, chunk_size=1000) == baseline
    # Below MIN_PARALLEL_BYTES the module stays in-process; lower it to use the pool.
    monkeypatch.setattr(corpus_mod, "MIN_PARALLEL_BYTES", 0)
    assert train_bpe(mixed_corpus, 500, [EOT, EOT2], num_workers=2, chunk_size=64) == baseline
    assert train_bpe(mixed_corpus, 500, [EOT, EOT2], num_workers=2) == baseline


def test_custom_pattern_with_tiny_chunks(mixed_corpus, reference_counts):
    # With "\S+\s*" a word keeps its trailing whitespace, so chunks may only be cut at
    # special tokens; the counts must still equal those of the whole text.
    pattern = r"\S+\s*|\s+"
    text = mixed_corpus.read_bytes().decode("utf-8")
    counts = reference_counts(text, [EOT, EOT2], pattern)
    expected = merge_pairs_reference({w.encode(): c for w, c in counts.items()}, 100)
    for chunk_size in (64, 1 << 20):
        _, merges = train_bpe(
            mixed_corpus, 356 + 2, [EOT, EOT2], pattern=pattern, chunk_size=chunk_size
        )
        assert merges == expected


def test_process_pool_is_really_used(mixed_corpus, monkeypatch):
    """Guard for the test above: with MIN_PARALLEL_BYTES at 0 and two workers the chunks
    go to a process pool."""
    pools = []
    real_pool = corpus_mod.ProcessPoolExecutor

    def recording_pool(*args, **kwargs):
        pools.append(args)
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(corpus_mod, "ProcessPoolExecutor", recording_pool)
    train_bpe(mixed_corpus, 300, [EOT], num_workers=2, chunk_size=256)
    assert pools == []  # 20 KB is below MIN_PARALLEL_BYTES: counted in-process
    monkeypatch.setattr(corpus_mod, "MIN_PARALLEL_BYTES", 0)
    train_bpe(mixed_corpus, 300, [EOT], num_workers=2, chunk_size=256)
    assert pools == [(2,)]


# ---------------------------------------------------------------------- corpus inputs


def test_directory_and_list_inputs(tmp_path, mixed_corpus, worked_corpus):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_bytes(worked_corpus.read_bytes())
    (folder / "sub" / "b.md").write_bytes(mixed_corpus.read_bytes())
    (folder / ".hidden.txt").write_text("zzzz zzzz zzzz " * 500)
    (folder / ".git").mkdir()
    (folder / ".git" / "notes.txt").write_text("qqqq qqqq " * 500)
    (folder / "image.bin").write_bytes(b"\x00\x01xxxx yyyy" * 500)
    from_dir = train_bpe(folder, 400, [EOT], num_workers=1)
    from_list = train_bpe([worked_corpus, mixed_corpus], 400, [EOT], num_workers=1)
    assert from_dir == from_list
    tokens = [a + b for a, b in from_dir[1]]
    assert not any(b"zz" in t or b"qq" in t or b"xx" in t for t in tokens)


def test_bad_vocab_size(worked_corpus):
    with pytest.raises(ConfigError, match="258"):
        train_bpe(worked_corpus, 257, [EOT, "<|pad|>"])
    with pytest.raises(ConfigError, match="256"):
        train_bpe(worked_corpus, 100)


def test_empty_special_token_is_refused(worked_corpus):
    with pytest.raises(ConfigError, match="special token"):
        train_bpe(worked_corpus, 300, [EOT, ""])


def test_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        train_bpe(path, 300)


def test_file_of_only_special_tokens(tmp_path):
    path = tmp_path / "specials.txt"
    path.write_text(EOT * 10 + EOT2 * 3)
    with pytest.raises(DataError, match="empty"):
        train_bpe(path, 300, [EOT, EOT2])


def test_missing_path(tmp_path):
    missing = tmp_path / "nope" / "corpus.txt"
    with pytest.raises(DataError, match="nope"):
        train_bpe(missing, 300)


def test_directory_without_text_files(tmp_path):
    folder = tmp_path / "binaries"
    folder.mkdir()
    (folder / "blob.bin").write_bytes(bytes(range(256)) * 10)
    with pytest.raises(DataError, match="no text files"):
        train_bpe(folder, 300)


def test_bad_inputs_are_scratchlm_errors(tmp_path):
    for call in (
        lambda: train_bpe(tmp_path / "missing.txt", 300),
        lambda: train_bpe(tmp_path, 10),
        lambda: train_bpe([], 300),
    ):
        with pytest.raises(ScratchLMError):
            call()


def test_invalid_utf8_is_replaced_and_counted(tmp_path, caplog):
    # Three bad bytes (\xff, \xfe, a lone continuation byte \x80), each its own U+FFFD.
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good text \xff here, more \xfe there \x80 end. " + b"plain words " * 20)
    with caplog.at_level(logging.WARNING, logger="scratchlm"):
        train_bpe(path, 300, num_workers=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    invalid = [m for m in warnings if "UTF-8" in m]
    assert len(invalid) == 1
    assert "3 invalid" in invalid[0]


def test_invalid_utf8_becomes_replacement_character(tmp_path):
    # "\xff\xff\xff " x50 -> pre-tokens "\ufffd\ufffd\ufffd" x1 and " \ufffd\ufffd\ufffd" x49
    # (plus a final " "). U+FFFD is EF BF BD: pairs (EF,BF) 150, (BF,BD) 150, (BD,EF) 100,
    # (' ',EF) 49. Tie at 150 -> greatest is (EF, BF); then (EFBF, BD) 150.
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xff\xff\xff " * 50)
    _, merges = train_bpe(path, 258, num_workers=1)
    assert merges == [(b"\xef", b"\xbf"), (b"\xef\xbf", b"\xbd")]


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"hello \xff world", 6),
        (b"ab \xe3\x81", 3),  # a character cut short at the end of the file
        (b"a" * (2**20 - 1) + b"\xe3A more", 2**20 - 1),  # across the 1 MiB read boundary
    ],
)
def test_strict_refuses_invalid_utf8(tmp_path, data, offset):
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        train_bpe(path, 300, strict=True, num_workers=1)
    assert str(path) in str(info.value)
    assert f"byte {offset}" in str(info.value)


def test_strict_accepts_valid_utf8(mixed_corpus):
    assert train_bpe(mixed_corpus, 300, [EOT], strict=True) == train_bpe(mixed_corpus, 300, [EOT])


def test_trains_on_a_builtin_corpus_by_name():
    from scratchlm.builtin import builtin_corpus
    from scratchlm.errors import DataError

    assert train_bpe("builtin:science", 300) == train_bpe(builtin_corpus(), 300)
    with pytest.raises(DataError, match="unknown input 'builtin:poems'"):
        train_bpe("builtin:poems", 300)
