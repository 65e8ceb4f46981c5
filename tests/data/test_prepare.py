"""prepare: token files that decode back to exactly the documents, a deterministic split by
document content with no leakage, up-to-date reruns, parallel = serial byte for byte, and
bad input refused before anything is encoded or written."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
from data_helpers import EOT, content_hash, make_docs, split_at, write_eot_file

import scratchlm.data.encode as encode_mod
import scratchlm.data.readers as readers
from scratchlm.data import open_tokens, prepare, read_meta, tokenizer_fingerprint
from scratchlm.errors import ConfigError, DataError, OutputExistsError
from scratchlm.tokenizer import BPETokenizer


def split_docs(tok, out) -> dict[str, list[str]]:
    """Per split, the documents the token file holds, checking each one's ids against
    encoding its text whole."""
    eot = tok.special_tokens[EOT]
    found = {}
    for split in ("train", "val"):
        docs = []
        for ids in split_at(open_tokens(out, split), eot):
            text = tok.decode(ids)
            assert ids == tok.encode(text)
            docs.append(text)
        found[split] = docs
    return found


def assert_order_preserving_partition(parts: dict[str, list[str]], docs: list[str]) -> None:
    position = {d: i for i, d in enumerate(docs)}
    assert sorted(parts["train"] + parts["val"], key=position.__getitem__) == docs
    for split in parts.values():
        assert [position[d] for d in split] == sorted(position[d] for d in split)


@pytest.fixture
def corpus(tmp_path):
    docs = make_docs(60)
    return write_eot_file(tmp_path / "corpus.txt", docs), docs


def test_round_trip_and_meta(tok, corpus, tmp_path):
    path, docs = corpus
    out = tmp_path / "data"
    meta = prepare([path], tok, out, val_fraction=0.2, progress=False)
    parts = split_docs(tok, out)
    assert_order_preserving_partition(parts, docs)
    assert parts["val"] and parts["train"]
    assert meta == read_meta(out) == json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and open_tokens(out).dtype == np.dtype("<u2")
    assert meta["end_of_text_id"] == tok.special_tokens[EOT]
    assert meta["vocab_size"] == tok.vocab_size
    assert meta["tokenizer_fingerprint"] == tokenizer_fingerprint(tok)
    data = path.read_bytes()
    assert meta["sources"] == [
        {"path": str(path), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    ]
    assert meta["settings"] == {
        "val_fraction": 0.2,
        "val_docs": None,
        "text_field": "text",
        "csv_column": None,
    }
    for split, texts in parts.items():
        info = meta["splits"][split]
        n_bytes = sum(len(t.encode()) for t in texts)
        assert info["documents"] == len(texts)
        assert info["tokens"] == len(open_tokens(out, split))
        assert info["bytes"] == n_bytes
        assert info["bytes_per_token"] == pytest.approx(n_bytes / info["tokens"])
    assert meta["replaced_utf8"] == {"files": 0, "bytes": 0}


def test_split_follows_the_documented_hash_rule(tok, corpus, tmp_path):
    path, docs = corpus
    prepare([path], tok, tmp_path / "f", val_fraction=0.25, progress=False)
    assert split_docs(tok, tmp_path / "f")["val"] == [d for d in docs if content_hash(d) < 0.25]
    prepare([path], tok, tmp_path / "n", val_docs=7, progress=False)
    smallest = set(sorted(docs, key=content_hash)[:7])
    assert split_docs(tok, tmp_path / "n")["val"] == [d for d in docs if d in smallest]


def test_two_runs_give_identical_files(tok, corpus, tmp_path):
    path, _ = corpus
    for name in ("a", "b"):
        prepare([path], tok, tmp_path / name, val_fraction=0.3, progress=False)
    for file in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


@pytest.mark.parametrize("rule", [{"val_fraction": 0.3}, {"val_docs": 5}])
def test_copies_of_a_document_never_straddle_the_split(tok, tmp_path, rule):
    docs = make_docs(30)
    corpus = docs + docs[::-1] + docs[::3]  # every document two or three times
    path = write_eot_file(tmp_path / "c.txt", corpus)
    prepare([path], tok, tmp_path / "out", progress=False, **rule)
    parts = split_docs(tok, tmp_path / "out")
    assert parts["val"] and not set(parts["train"]) & set(parts["val"])
    assert len(parts["train"]) + len(parts["val"]) == len(corpus)


def test_uint32_when_the_vocabulary_passes_65536(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[70_000] = b"never produced"
    big = BPETokenizer(vocab, [], [EOT])
    assert big.special_tokens[EOT] > 65_535
    docs = ["abc", "de", "fgh", "ij"]
    path = write_eot_file(tmp_path / "c.txt", docs)
    meta = prepare([path], big, tmp_path / "out", val_docs=1, progress=False)
    assert meta["dtype"] == "uint32" and open_tokens(tmp_path / "out").dtype == np.dtype("<u4")
    parts = split_docs(big, tmp_path / "out")
    assert_order_preserving_partition(parts, docs)


def test_rerun_is_a_no_op(tok, corpus, tmp_path, caplog):
    path, _ = corpus
    out = tmp_path / "data"
    meta = prepare([path], tok, out, val_fraction=0.2, progress=False)
    stamps = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
    with caplog.at_level(logging.INFO, logger="scratchlm"):
        again = prepare([path], tok, out, val_fraction=0.2, progress=False)
    assert again == meta
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == stamps
    assert "up to date" in caplog.text


def test_changed_input_settings_or_tokenizer_refused_unless_force(tok, corpus, tmp_path):
    path, docs = corpus
    out = tmp_path / "data"
    prepare([path], tok, out, val_fraction=0.2, progress=False)
    with pytest.raises(OutputExistsError, match="--force"):
        prepare([path], tok, out, val_fraction=0.3, progress=False)
    other_tok = BPETokenizer({i: bytes([i]) for i in range(256)}, [], [EOT])
    with pytest.raises(OutputExistsError):
        prepare([path], other_tok, out, val_fraction=0.2, progress=False)
    write_eot_file(path, [*docs, "one more document"])
    with pytest.raises(OutputExistsError):
        prepare([path], tok, out, val_fraction=0.2, progress=False)
    meta = prepare([path], tok, out, val_fraction=0.2, progress=False, force=True)
    assert sum(s["documents"] for s in meta["splits"].values()) == len(docs) + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "data"]  # no leftovers


def test_two_workers_write_the_same_bytes_as_one(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(encode_mod, "BATCH_CHARS", 500)  # many batches for the workers
    docs = make_docs(200)
    path = write_eot_file(tmp_path / "c.txt", docs)
    for workers in (1, 2):
        prepare([path], tok, tmp_path / f"w{workers}", val_fraction=0.1, workers=workers)
    for file in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "w1" / file).read_bytes() == (tmp_path / "w2" / file).read_bytes()
    assert_order_preserving_partition(split_docs(tok, tmp_path / "w2"), docs)


def test_huge_document_is_encoded_in_pieces_with_the_ids_of_the_whole(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(encode_mod, "PIECE_CHARS", 300)
    monkeypatch.setattr(readers, "BLOCK_BYTES", 128)
    huge = "".join(f"Sentence {i} runs on, and on:\n\tthe rain falls   again. " for i in range(400))
    docs = [*make_docs(8), huge]
    path = write_eot_file(tmp_path / "c.txt", docs)
    lengths: list[int] = []
    encode = tok.encode

    def spy(text, **kwargs):
        lengths.append(len(text))
        return encode(text, **kwargs)

    monkeypatch.setattr(tok, "encode", spy)
    prepare([path], tok, tmp_path / "out", val_docs=2, workers=1, progress=False)
    monkeypatch.undo()
    assert max(lengths) < len(huge) // 10  # it was cut into many pieces
    # split_docs checks that every document's ids equal encoding its text whole.
    assert_order_preserving_partition(split_docs(tok, tmp_path / "out"), docs)


def test_empty_validation_or_training_split_is_refused_before_writing(tok, tmp_path):
    path = write_eot_file(tmp_path / "c.txt", ["the only document"])
    out = tmp_path / "out"
    with pytest.raises(DataError, match="split is empty") as err:
        prepare([path], tok, out, val_fraction=0.5, progress=False)
    assert "--val-fraction" in str(err.value) or "--val-docs" in str(err.value)
    write_eot_file(path, make_docs(3))
    with pytest.raises(DataError, match="training split is empty"):
        prepare([path], tok, out, val_docs=3, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("late.jsonl", '{"text": "a"}\n' * 50 + '["not an object"]\n', "line 51"),
        ("field.jsonl", '{"text": "a"}\n{"body": "b"}\n', "line 2: no 'text' field"),
        ("cols.csv", "id,body\n1,x\n", "no column 'text'"),
        ("shape.json", '{"text": "x"}', "expected a JSON list"),
        ("bad.txt", b"ok " * 5000 + b"\xff", "invalid UTF-8 at byte 15000"),
        ("missing.txt", None, "does not exist"),
    ],
)
def test_bad_input_fails_before_encoding_and_writes_nothing(
    tok, tmp_path, monkeypatch, name, content, message
):
    good = write_eot_file(tmp_path / "good.txt", make_docs(40))
    bad = tmp_path / name
    if isinstance(content, bytes):
        bad.write_bytes(content)
    elif content is not None:
        bad.write_text(content, encoding="utf-8")

    def no_encoding(*args):
        raise AssertionError("encoding started before the inputs were checked")

    monkeypatch.setattr(encode_mod, "encode_batch", no_encoding)
    csv_column = "text" if name.endswith(".csv") else None
    with pytest.raises(DataError, match=message) as err:
        prepare([good, bad], tok, tmp_path / "out", strict=True, csv_column=csv_column)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_replaced_utf8_is_counted_in_meta_and_logged(tok, tmp_path, caplog):
    path = write_eot_file(tmp_path / "c.txt", make_docs(20))
    path.write_bytes(path.read_bytes() + b" bad \xff\xfe bytes")
    with caplog.at_level(logging.WARNING, logger="scratchlm"):
        meta = prepare([path], tok, tmp_path / "out", val_docs=2, progress=False)
    assert meta["replaced_utf8"] == {"files": 1, "bytes": 2}
    assert "replaced 2 invalid UTF-8 byte(s) in 1 file(s)" in caplog.text
    # The same output asked for again under --strict: refused, not "up to date".
    with pytest.raises(DataError, match=f"{path.name}: invalid UTF-8 at byte"):
        prepare([path], tok, tmp_path / "out", val_docs=2, strict=True, progress=False)


def test_tokenizer_without_end_of_text_and_bad_settings(tmp_path, tok, corpus):
    path, _ = corpus
    plain = BPETokenizer({i: bytes([i]) for i in range(256)}, [])
    with pytest.raises(DataError, match="--special-token '<\\|endoftext\\|>'"):
        prepare([path], plain, tmp_path / "out", progress=False)
    for bad in ({"val_fraction": 0.0}, {"val_fraction": 1.0}, {"val_docs": 0}, {"workers": 0}):
        with pytest.raises(ConfigError):
            prepare([path], tok, tmp_path / "out", progress=False, **bad)
    assert not (tmp_path / "out").exists()


def test_open_tokens_checks_the_tokenizer_and_the_files(tok, corpus, tmp_path):
    path, _ = corpus
    out = tmp_path / "data"
    meta = prepare([path], tok, out, val_fraction=0.2, progress=False)
    other = BPETokenizer({i: bytes([i]) for i in range(256)}, [], [EOT])
    have, want = meta["tokenizer_fingerprint"][:12], tokenizer_fingerprint(other)[:12]
    with pytest.raises(DataError, match=f"{have}.*{want}.*prepare.*again"):
        open_tokens(out, "train", tokenizer=other)
    tokens = open_tokens(out, "val", tokenizer=tok)
    assert isinstance(tokens, np.memmap) and not tokens.flags.writeable
    with pytest.raises(DataError, match="unknown split"):
        open_tokens(out, "test")
    with open(out / "train.bin", "r+b") as f:
        f.truncate(10)
    with pytest.raises(DataError, match=r"train\.bin has 10 bytes"):
        open_tokens(out, "train")
    (out / "meta.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="cannot read"):
        read_meta(out)
    (out / "meta.json").unlink()
    with pytest.raises(DataError, match=r"no meta\.json"):
        open_tokens(out)


def test_output_directory_inside_an_input_directory_is_not_read(tok, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_eot_file(corpus / "c.txt", make_docs(20))
    first = prepare([corpus], tok, corpus / "tokens", val_docs=2, progress=False)
    again = prepare([corpus], tok, corpus / "tokens", val_docs=2, progress=False)
    assert again == first
