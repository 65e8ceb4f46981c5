"""Readers: every input format gives back exactly its documents, streamed; bad input is a
one-line DataError naming the file (and line); invalid UTF-8 is replaced and counted, or
refused with its byte offset under strict."""

from __future__ import annotations

import csv
import json
import sys
import sysconfig
from pathlib import Path

import pytest
from data_helpers import EOT, make_docs, write_eot_file

import scratchlm.data.readers as readers
from scratchlm.builtin import builtin_corpus
from scratchlm.data import ReadStats, iter_documents, read_pieces, resolve_inputs
from scratchlm.data import sources as sources_mod
from scratchlm.errors import DataError


def docs_of(*inputs, **kwargs) -> list[str]:
    return list(iter_documents([str(i) for i in inputs], **kwargs))


# ------------------------------------------------------------------------ plain text


def test_text_file_without_marker_is_one_document_verbatim(tmp_path):
    text = "Line one\r\nline two\twith tab\n日本語 😀\n\n  trailing  \n"
    path = tmp_path / "notes.md"
    path.write_bytes(text.encode())
    assert docs_of(path) == [text]


def test_text_file_is_split_at_the_end_of_text_marker(tmp_path):
    docs = make_docs(5)
    path = write_eot_file(tmp_path / "c.txt", docs)
    assert docs_of(path) == docs


def test_empty_and_blank_documents_are_left_out_and_counted(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(f"{EOT}first{EOT} \n\t{EOT}{EOT}second\n{EOT}\n", encoding="utf-8")
    stats = ReadStats()
    assert docs_of(path, stats=stats) == ["first", "second\n"]
    assert stats.blank_documents == 4  # "", " \n\t", "", "\n"


@pytest.mark.parametrize("block", [1, 2, 3, 5, 7, 13, 64])
def test_markers_and_characters_cut_by_block_boundaries(tmp_path, monkeypatch, block):
    """Small read blocks cut markers and multi-byte characters anywhere: same documents,
    and no valid byte is counted as invalid."""
    monkeypatch.setattr(readers, "BLOCK_BYTES", block)
    docs = ["日本語のテキスト", "😀👍🏽 emoji", "<|endoftext", "|> almost a marker", "x" * 40]
    path = write_eot_file(tmp_path / "c.txt", docs)
    stats = ReadStats()
    assert docs_of(path, stats=stats) == docs
    assert stats.replaced_bytes == 0


def test_a_huge_document_is_streamed_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "BLOCK_BYTES", 1000)
    big = "word " * 5000
    path = write_eot_file(tmp_path / "c.txt", ["small", big, "tail"])
    [source] = resolve_inputs([path])
    pieces = list(read_pieces([source]))
    big_pieces = pieces[1:-1]
    assert len(big_pieces) > 10 and max(len(t) for t, _ in big_pieces) <= 1000 + len(EOT)
    assert [end for _, end in big_pieces] == [False] * (len(big_pieces) - 1) + [True]
    assert "".join(t for t, _ in big_pieces) == big


def test_directory_is_read_recursively_in_sorted_order(tmp_path):
    root = tmp_path / "corpus"
    for rel, text in {
        "b.txt": "B",
        "a/z.txt": "AZ",
        "a/b/c.txt": "ABC",
        "a.txt": "A",
        ".hidden.txt": "hidden",
        ".git/config": "hidden dir",
        "d/records.jsonl": '{"text": "from jsonl"}\n',
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / "image.bin").write_bytes(b"\x89PNG\x00\x00binary")
    assert docs_of(root) == ["ABC", "AZ", "A", "B", "from jsonl"]


def test_builtin_science_is_the_packaged_corpus_split_at_markers():
    text = builtin_corpus().read_text(encoding="utf-8")
    expected = [d for d in text.split(EOT) if d.strip()]
    assert len(expected) > 50
    assert docs_of("builtin:science") == expected


def test_builtin_python_is_the_standard_library_one_document_per_file():
    sources = resolve_inputs(["builtin:python"])
    paths = [s.path for s in sources]
    assert len(paths) > 100 and paths == sorted(paths)
    assert all(p.suffix == ".py" and "site-packages" not in p.parts for p in paths)
    assert {s.format for s in sources} == {"text"} and not any(s.split_eot for s in sources)
    assert Path(sysconfig.get_paths()["stdlib"], "json", "__init__.py") in paths
    texts = [p.read_bytes().decode("utf-8", errors="replace") for p in paths[:20]]
    assert list(iter_documents(sources[:20])) == [t for t in texts if t.strip()]


# ----------------------------------------------------------------------------- JSON


def test_json_list_of_strings_and_of_objects(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["one", "two\nlines", "日本"]), encoding="utf-8")
    (tmp_path / "b.json").write_text(
        json.dumps([{"body": "x", "id": 1}, {"body": "y"}]), encoding="utf-8"
    )
    assert docs_of(tmp_path / "a.json") == ["one", "two\nlines", "日本"]
    assert docs_of(tmp_path / "b.json", text_field="body") == ["x", "y"]


@pytest.mark.parametrize("block", [1, 4, 9, 1 << 20])
def test_json_list_is_parsed_incrementally(tmp_path, monkeypatch, block):
    monkeypatch.setattr(readers, "BLOCK_BYTES", block)
    docs = ["short", 'a longer string with "quotes" and \\ and ]', "😀" * 30, "x" * 200]
    path = tmp_path / "a.json"
    path.write_text(" [\n " + ",\n".join(json.dumps(d) for d in docs) + " ]\n", encoding="utf-8")
    assert docs_of(path) == docs


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "an object"}', "expected a JSON list"),
        ("", "empty file"),
        ('["ok", 3]', "element 1: expected a string or an object"),
        ('["ok", {"body": "x"}]', "element 1: no 'text' field"),
        ('["ok", "cut off', "element 1: invalid JSON"),
        ('["ok" "no comma"]', "expected ',' or ']'"),
        ('["ok"] trailing', "unexpected text after"),
    ],
)
def test_bad_json_is_a_data_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        docs_of(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_json_lone_surrogate_is_replaced_or_refused(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('["a\\ud800b"]', encoding="utf-8")
    stats = ReadStats()
    assert docs_of(path, stats=stats) == ["a\ufffdb"]
    assert stats.replaced_bytes == 1 and stats.replaced_files == [str(path)]
    with pytest.raises(DataError, match="lone surrogate"):
        docs_of(path, strict=True)


# ---------------------------------------------------------------------------- JSONL


def test_jsonl_reads_the_text_field_and_skips_blank_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [{"text": "one", "n": 1}, {"text": "two\nlines"}, {"content": "c", "text": "三"}]
    text = "\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + json.dumps(lines[2])
    path.write_text(text, encoding="utf-8")
    assert docs_of(path) == ["one", "two\nlines", "三"]
    path.write_text(json.dumps({"content": "C"}) + "\r\n", encoding="utf-8")
    assert docs_of(path, text_field="content") == ["C"]


@pytest.mark.parametrize(
    ("line3", "message"),
    [
        ('["a list"]', "line 3: expected a JSON object with a 'text' field, found a JSON array"),
        ('{"body": "x"}', "line 3: no 'text' field .*'body'"),
        ('{"text": 5}', "line 3: field 'text' is a JSON number"),
        ("{not json", "line 3: invalid JSON"),
    ],
)
def test_bad_jsonl_line_is_a_data_error_naming_file_and_line(tmp_path, line3, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n' + line3 + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        docs_of(path)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------ CSV


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def test_csv_named_column_and_joined_rows(tmp_path):
    rows = [["id", "body"], ["1", "first, with comma"], ["2", 'multi\nline "quoted"'], ["3", ""]]
    path = write_csv(tmp_path / "t.csv", rows)
    assert docs_of(path, csv_column="body") == ["first, with comma", 'multi\nline "quoted"']
    # Without a column every row, the first too, is a document: its cells joined by newlines.
    assert docs_of(path) == ["id\nbody", "1\nfirst, with comma", '2\nmulti\nline "quoted"', "3\n"]


def test_csv_long_field_is_read(tmp_path):
    path = write_csv(tmp_path / "t.csv", [["body"], ["x" * 300_000]])
    assert docs_of(path, csv_column="body") == ["x" * 300_000]


def test_csv_missing_column_and_short_row_are_data_errors(tmp_path):
    path = write_csv(tmp_path / "t.csv", [["id", "body"], ["1", "ok"]])
    with pytest.raises(DataError, match=r"no column 'text' \(columns: 'id', 'body'\)") as err:
        resolve_inputs([path], csv_column="text")  # found before any document is read
    assert str(path) in str(err.value)
    write_csv(path, [["id", "body"], ["1", "ok"], ["2"]])
    with pytest.raises(DataError, match="line 3: the row has 1 cell"):
        docs_of(path, csv_column="body")


# ---------------------------------------------------------------- Parquet, HF datasets


def test_parquet_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    table = pa.table({"text": ["alpha", None, "γάμμα", "delta"], "n": [1, 2, 3, 4]})
    pq.write_table(table, path, row_group_size=2)
    stats = ReadStats()
    assert docs_of(path, stats=stats) == ["alpha", "γάμμα", "delta"]
    assert stats.blank_documents == 1
    with pytest.raises(DataError, match="no column 'body'") as err:
        docs_of(path, text_field="body")
    assert str(path) in str(err.value)
    with pytest.raises(DataError, match="holds int64, not strings"):
        docs_of(path, text_field="n")


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"pip install 'scratchlm\[data\]'"):
        docs_of(path)


def test_hugging_face_dataset_on_disk(tmp_path):
    import datasets

    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": ["one", "two", "三"], "n": [1, 2, 3]}).save_to_disk(folder)
    assert docs_of(folder) == ["one", "two", "三"]
    # Found inside a directory too, taken whole (its .arrow/.json files are not read as text).
    (tmp_path / "notes.txt").write_text("notes", encoding="utf-8")
    assert docs_of(tmp_path) == ["one", "two", "三", "notes"]
    with pytest.raises(DataError, match="no column 'body'"):
        resolve_inputs([folder], text_field="body")
    splits = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})}).save_to_disk(
        splits
    )
    with pytest.raises(DataError, match="point at one split's folder"):
        resolve_inputs([splits])


# ------------------------------------------------------------------ invalid UTF-8


def test_invalid_utf8_is_replaced_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "BLOCK_BYTES", 3)  # bad bytes across block boundaries
    good = tmp_path / "a.txt"
    good.write_text("fine", encoding="utf-8")
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"ab\xffcd\xe6\x97" + EOT.encode() + b"\xc3\xa9t\xe9")
    stats = ReadStats()
    assert docs_of(good, bad, stats=stats) == ["fine", "ab\ufffdcd\ufffd", "ét\ufffd"]
    assert stats.replaced_bytes == 4  # ff, the two bytes of a cut-off character, e9
    assert stats.replaced_files == [str(bad)]


@pytest.mark.parametrize("block", [2, 1 << 20])
def test_strict_refuses_invalid_utf8_naming_file_and_offset(tmp_path, monkeypatch, block):
    monkeypatch.setattr(readers, "BLOCK_BYTES", block)
    path = tmp_path / "b.txt"
    path.write_bytes("日本 ok ".encode() + b"\xff rest")
    with pytest.raises(DataError, match=rf"{path.name}: invalid UTF-8 at byte 10"):
        docs_of(path, strict=True)


# ------------------------------------------------------------------ missing inputs


def test_missing_unknown_and_unreadable_inputs(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        resolve_inputs([tmp_path / "nope.txt"])
    with pytest.raises(DataError, match="unknown input 'builtin:nope'"):
        resolve_inputs(["builtin:nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no input files"):
        resolve_inputs([tmp_path / "empty"])
    binary = tmp_path / "x.dat"
    binary.write_bytes(b"\x00\x01")
    with pytest.raises(DataError, match="looks binary"):
        resolve_inputs([binary])

    locked = tmp_path / "locked.txt"
    locked.write_text("secret", encoding="utf-8")

    def refuse(path, *args, **kwargs):  # what open() does on a file without read permission
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(sources_mod, "open", refuse, raising=False)
    with pytest.raises(DataError, match=rf"cannot read {locked}: Permission denied"):
        resolve_inputs([locked])
