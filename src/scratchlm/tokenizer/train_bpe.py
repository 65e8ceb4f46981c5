"""Byte-level BPE training (Sennrich et al., 2016; byte-level as in GPT-2).

Start from the 256 single bytes. Count every adjacent pair of tokens inside every
pre-token (weighted by how often the pre-token occurs), merge the most frequent pair into
a new token, and repeat until the vocabulary is full. Among pairs with equal counts the
lexicographically greatest ``(bytes_a, bytes_b)`` is merged first, so training is
deterministic on any machine.

Two implementations of the merge loop live here:

* ``merge_pairs_reference`` recounts every pair after every merge: the algorithm as
  written in the papers, slow (a full pass over all words per merge) but obviously right.
* ``merge_pairs`` updates pair counts incrementally: it keeps, for each pair, the words
  that contain it, so a merge touches only those words, and a heap finds the most
  frequent pair. A test proves both give the same merges.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from tqdm.auto import tqdm

from scratchlm.errors import ConfigError, DataError
from scratchlm.tokenizer.corpus import (
    DEFAULT_CHUNK_SIZE,
    MAX_PRETOKEN_CHARS,
    check_workers,
    corpus_files,
    count_pretokens,
)
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN, resolve_pattern

log = logging.getLogger(__name__)

Merge = tuple[bytes, bytes]


def train_bpe(
    input_path: str | os.PathLike | Sequence[str | os.PathLike],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    *,
    pattern: str = GPT2_PATTERN,
    num_workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    strict: bool = False,
    progress: bool = False,
    max_pretoken_chars: int = MAX_PRETOKEN_CHARS,
) -> tuple[dict[int, bytes], list[Merge]]:
    """Train a byte-level BPE tokenizer on a file, a directory or a list of them.

    Returns ``(vocab, merges)``: ids 0-255 are the single bytes, then one token per merge
    in merge order, then the special tokens. ``len(vocab) == vocab_size`` unless the
    corpus runs out of pairs first (logged as a warning). A pre-token longer than
    ``max_pretoken_chars`` is counted in pieces of that length, which keeps time and
    memory bounded on a huge line without spaces (``corpus`` explains).
    """
    special_tokens = _check_special_tokens(special_tokens)
    check_workers(num_workers)
    if vocab_size < 256 + len(special_tokens):
        raise ConfigError(
            f"vocab_size {vocab_size} is too small: it must hold the 256 byte tokens and "
            f"{len(special_tokens)} special token(s), so use at least {256 + len(special_tokens)}"
        )
    files = corpus_files(input_path)
    start = time.perf_counter()
    counted = count_pretokens(
        files,
        special_tokens,
        resolve_pattern(pattern),
        num_workers=num_workers,
        chunk_size=chunk_size,
        strict=strict,
        progress=progress,
        max_pretoken_chars=max_pretoken_chars,
    )
    if counted.bad_bytes:
        log.warning(
            "corpus has %d invalid UTF-8 byte(s); they were replaced with U+FFFD "
            "(use --strict to refuse such input)",
            counted.bad_bytes,
        )
    if not counted.counts:
        raise DataError(f"the corpus ({', '.join(map(str, files))}) is empty: nothing to train on")
    log.info(
        "pre-tokenized %d bytes into %d distinct pre-tokens in %.1fs",
        counted.n_bytes,
        len(counted.counts),
        time.perf_counter() - start,
    )
    word_counts = {w.encode("utf-8"): c for w, c in counted.counts.items()}
    num_merges = vocab_size - 256 - len(special_tokens)
    merges = merge_pairs(word_counts, num_merges, progress=progress)
    if len(merges) < num_merges:
        log.warning(
            "the corpus ran out of pairs to merge after %d merges: the vocabulary has %d "
            "tokens instead of %d",
            len(merges),
            256 + len(merges) + len(special_tokens),
            vocab_size,
        )
    return build_vocab(merges, special_tokens), merges


def build_vocab(merges: Sequence[Merge], special_tokens: Sequence[str] = ()) -> dict[int, bytes]:
    """The vocabulary implied by merges: bytes, then merged tokens, then special tokens."""
    vocab = {i: bytes([i]) for i in range(256)}
    for a, b in merges:
        vocab[len(vocab)] = a + b
    for token in special_tokens:
        vocab[len(vocab)] = token.encode("utf-8")
    return vocab


def _check_special_tokens(special_tokens: Sequence[str]) -> list[str]:
    if isinstance(special_tokens, str):
        special_tokens = [special_tokens]
    out: list[str] = []
    for token in special_tokens:
        if not isinstance(token, str) or not token:
            raise ConfigError(f"special token {token!r} is invalid: use a non-empty string")
        if token not in out:
            out.append(token)
    return out


def merge_pairs_reference(word_counts: Mapping[bytes, int], num_merges: int) -> list[Merge]:
    """The readable merge loop: recount all pairs, merge the best, repeat.

    ``word_counts`` maps each pre-token's bytes to its number of occurrences.
    """
    words: dict[tuple[bytes, ...], int] = Counter()
    for word, count in word_counts.items():
        words[tuple(bytes([b]) for b in word)] += count
    merges: list[Merge] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties: greatest (bytes, bytes)
        merges.append(best)
        merged: dict[tuple[bytes, ...], int] = Counter()
        for word, count in words.items():
            merged[tuple(apply_merge(word, best, best[0] + best[1]))] += count
        words = merged
    return merges


def apply_merge(word: Sequence, pair: tuple, new) -> list:
    """Replace every occurrence of ``pair`` in ``word``, scanning left to right (used by
    training and by encoding, so both merge overlapping pairs the same way).

    ``list.index`` finds each candidate left token in C, which matters: this runs for
    every word holding a merged pair.
    """
    a, b = pair
    out: list = []
    i, n = 0, len(word)
    while True:
        try:
            j = word.index(a, i, n - 1)  # a left token with a right neighbour
        except ValueError:
            break
        if word[j + 1] == b:
            out.extend(word[i:j])
            out.append(new)
            i = j + 2
        else:
            out.extend(word[i : j + 1])
            i = j + 1
    out.extend(word[i:])
    return out


def _order_key(token: bytes) -> tuple[int, ...]:
    """A key that sorts byte strings in *descending* order (a prefix sorts after its
    extensions), so a min-heap pops the lexicographically greatest pair first."""
    return (*(255 - b for b in token), 256)


def merge_pairs(
    word_counts: Mapping[bytes, int], num_merges: int, *, progress: bool = False
) -> list[Merge]:
    """The incremental merge loop; returns the same merges as ``merge_pairs_reference``.

    State: each distinct word as a list of token ids, pair -> total count, pair -> the
    words that may hold it, and a heap of ``(-count, key_a, key_b, pair)`` entries. Both
    the index and the heap are lazy: a word that lost a pair stays in its index (it is
    skipped when nothing merges), and a count change pushes a new heap entry, so stale
    entries are skipped when popped.
    """
    tokens: list[bytes] = [bytes([i]) for i in range(256)]
    keys: list[tuple[int, ...]] = [_order_key(t) for t in tokens]
    words = [list(w) for w in word_counts]
    counts = list(word_counts.values())

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for i, (word, count) in enumerate(zip(words, counts, strict=True)):
        for pair in itertools.pairwise(word):
            pair_counts[pair] += count
            where[pair].add(i)
    heap = [(-c, keys[a], keys[b], (a, b)) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    bar = tqdm(total=num_merges, desc="merging", unit="merge", disable=not progress, leave=False)
    merges: list[Merge] = []
    while len(merges) < num_merges and heap:
        neg, _, _, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg or neg == 0:
            continue  # stale entry: the count changed after this was pushed
        a, b = pair
        new = len(tokens)
        tokens.append(tokens[a] + tokens[b])
        keys.append(_order_key(tokens[new]))
        merges.append((tokens[a], tokens[b]))

        # Only words that held the pair change; recount their pairs (old out, new in).
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for i in where.pop(pair):
            word = words[i]
            merged = apply_merge(word, pair, new)
            if len(merged) == len(word):
                continue  # the index is lazy: this word lost the pair to an earlier merge
            count = counts[i]
            for p in itertools.pairwise(word):
                delta[p] -= count
            for p in itertools.pairwise(merged):
                delta[p] += count
                if new in p:  # pairs without the new token were indexed already
                    where[p].add(i)
            words[i] = merged
        del pair_counts[pair]
        for p, d in delta.items():
            if d == 0 or p == pair:
                continue
            c = pair_counts[p] + d
            if c > 0:
                pair_counts[p] = c
                heapq.heappush(heap, (-c, keys[p[0]], keys[p[1]], p))
            else:
                del pair_counts[p]
        bar.update(1)
    bar.close()
    return merges
