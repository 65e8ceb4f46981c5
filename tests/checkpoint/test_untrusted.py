"""Hostile checkpoint and Hugging Face files: an edited config.json, a forged safetensors
header. Each is refused with one line before anything of the size it claims is allocated
(issue 13, item 4)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import scratchlm
from scratchlm.checkpoint import load_checkpoint, load_model, save_checkpoint
from scratchlm.checkpoint.files import write_manifest
from scratchlm.checkpoint.fits import check_config_fits
from scratchlm.checkpoint.header import read_header
from scratchlm.cli import main
from scratchlm.config import ModelConfig, preset
from scratchlm.errors import CheckpointError
from scratchlm.export import from_hf, to_hf
from scratchlm.model import TransformerLM
from scratchlm.tokenizer import BPETokenizer, train_bpe

EOT = "<|endoftext|>"


@pytest.fixture
def checkpoint(tmp_path, make_model, char_tokenizer) -> Path:
    return save_checkpoint(make_model(), None, 1, tmp_path / "ckpt", tokenizer=char_tokenizer)


def _edit_config(folder: Path, **changes) -> None:
    """Change model fields in config.json and re-hash the manifest, as anyone can."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["model"].update(changes)
    path.write_text(json.dumps(config))
    _rehash(folder)


def _rehash(folder: Path) -> None:
    (folder / "manifest.json").unlink()
    write_manifest(folder)


def _write_raw(path: Path, header: dict, data: bytes = b"", length: int | None = None) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        (dict(vocab_size=50_000_000), "vocab_size=50000000"),
        (dict(n_layers=1_000_000_000), "n_layers=1000000000"),
        (dict(d_ff=10**9), "d_ff=1000000000"),
        (dict(n_layers=3), "n_layers=3 but .* holds blocks 0-0"),
        (dict(shared_depth=10**12), "shared_depth=1000000000000"),
        (dict(context_length=10**12), "context_length=1000000000000 alone takes"),
    ],
)
def test_an_edited_config_is_refused_in_one_line_before_allocating(checkpoint, changes, named):
    _edit_config(checkpoint, **changes)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=named) as caught:
        load_model(checkpoint)
    assert time.perf_counter() - start < 10  # no model of that size was built
    assert "\n" not in str(caught.value) and str(checkpoint / "config.json") in str(caught.value)


def test_a_learned_position_table_larger_than_the_file_is_refused(tmp_path, make_model):
    ckpt = save_checkpoint(make_model(position="learned"), None, 1, tmp_path / "ckpt")
    _edit_config(ckpt, context_length=10**10)
    with pytest.raises(CheckpointError, match="context_length=10000000000"):
        load_model(ckpt)


def test_shapes_that_disagree_with_the_config_are_named(checkpoint):
    _edit_config(checkpoint, n_kv_heads=4)  # k_proj and v_proj grow; no bound is crossed
    with pytest.raises(
        CheckpointError,
        match=r"k_proj\.weight has shape \(32, 64\) in the checkpoint but \(64, 64\)",
    ):
        load_model(checkpoint)


def test_loading_memory_is_compared_with_the_machine(checkpoint):
    header = read_header(checkpoint / "model.safetensors")
    config = ModelConfig.from_dict(json.loads((checkpoint / "config.json").read_text())["model"])
    shapes = check_config_fits(config, [header], "config.json", memory=1 << 40)
    assert shapes["embed_tokens.weight"] == header.tensors["embed_tokens.weight"].shape
    with pytest.raises(CheckpointError, match=r"needs about .* GB of memory .* has 0\.0 GB"):
        check_config_fits(config, [header], "config.json", memory=1000)


def _one(shape: list[int], offsets: list[int], dtype: str = "F32") -> dict:
    return {"w": {"dtype": dtype, "shape": shape, "data_offsets": offsets}}


@pytest.mark.parametrize(
    ("forge", "named"),
    [
        (lambda p: _write_raw(p, {}, length=2**60), "claims 1,152,921,504,606,846,976 bytes"),
        (lambda p: p.write_bytes(b"\x01\x00"), "too short for a header"),
        (lambda p: _write_raw(p, _one([10**9, 10**9], [0, 16]), b"\0" * 16), "has shape"),
        (lambda p: _write_raw(p, _one([4], [0, 16]), b"\0" * 8), "outside the 8 bytes"),
        (lambda p: _write_raw(p, _one([-4], [0, 16]), b"\0" * 16), "integers >= 0"),
        (lambda p: _write_raw(p, _one([4], [0, 16], "PICKLE"), b"\0" * 16), "unknown dtype"),
        (lambda p: _write_raw(p, ["not", "an", "object"]), "not a JSON object"),
        (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{}"), "not JSON"),
    ],
)
def test_a_forged_safetensors_header_is_refused(tmp_path, forge, named):
    file = tmp_path / "model.safetensors"
    forge(file)
    with pytest.raises(CheckpointError, match=named) as caught:
        read_header(file)
    assert "\n" not in str(caught.value) and str(file) in str(caught.value)


def test_a_real_header_reads_as_safetensors_wrote_it(tmp_path):
    tensors = {"a": torch.zeros(2, 3), "b": torch.zeros(5, dtype=torch.bfloat16)}
    save_file(tensors, tmp_path / "x.safetensors", metadata={"k": "v"})
    header = read_header(tmp_path / "x.safetensors")
    assert {n: (e.dtype, e.shape) for n, e in header.tensors.items()} == {
        "a": ("F32", (2, 3)),
        "b": ("BF16", (5,)),
    }
    assert header.metadata == {"k": "v"} and header.numel == 11 and header.data_bytes == 34


def test_a_forged_header_in_a_checkpoint_fails_load_and_load_checkpoint(checkpoint, make_model):
    weights = checkpoint / "model.safetensors"
    _write_raw(weights, {}, length=2**60)
    _rehash(checkpoint)
    with pytest.raises(CheckpointError, match="header claims"):
        load_model(checkpoint)
    with pytest.raises(CheckpointError, match="header claims"):
        load_checkpoint(checkpoint, make_model(), verify=False)


def test_load_checkpoint_names_a_shape_mismatch_before_reading_tensors(checkpoint, make_model):
    with pytest.raises(CheckpointError, match=r"has shape .* in the checkpoint but"):
        load_checkpoint(checkpoint, make_model(d_ff=64))


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_cli_generate_on_an_edited_config_is_one_line_and_small(checkpoint):
    """Through the real command in a fresh process: exit 2, one line, no traceback, and
    its peak memory stays that of a process that imported torch."""
    _edit_config(checkpoint, vocab_size=50_000_000)  # 12.8 GB of float32 embeddings
    driver = (
        "import resource, sys; from scratchlm.cli import main; rc = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", driver, "generate", str(checkpoint), "--prompt", "a"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": _source_path(), "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("scratchlm: error: ") and "vocab_size" in err
    peak_kib = int(done.stdout.split()[-1])  # Linux reports KiB
    assert peak_kib < 2_000_000, f"peak RSS {peak_kib} KiB"


def _source_path() -> str:
    """PYTHONPATH for a child process that imports this very scratchlm."""
    src = str(Path(scratchlm.__file__).resolve().parents[1])
    return os.pathsep.join([src, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


@pytest.fixture
def hf_folder(tmp_path) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 20)
    vocab, merges = train_bpe(corpus, 280, [EOT], num_workers=1)
    tok = BPETokenizer(vocab, merges, [EOT])
    config = preset("tiny", vocab_size=tok.vocab_size, n_layers=2, context_length=32)
    return to_hf(TransformerLM(config), tok, tmp_path / "hf")


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        (dict(vocab_size=50_000_000), "vocab_size=50000000"),
        (dict(num_hidden_layers=1_000_000_000), "n_layers=1000000000"),
        (dict(num_hidden_layers=3), "n_layers=3 but"),
        (dict(intermediate_size=10**9), "d_ff=1000000000"),
    ],
)
def test_import_hf_refuses_an_edited_config_in_one_line(hf_folder, changes, named, capsys):
    path = hf_folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    with pytest.raises(CheckpointError, match=named):
        from_hf(hf_folder)
    assert main(["import", "hf", str(hf_folder), str(hf_folder.parent / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("scratchlm: error: "), err
    assert not (hf_folder.parent / "out").exists()


def test_import_hf_refuses_a_forged_header(hf_folder):
    _write_raw(hf_folder / "model.safetensors", {}, length=2**60)
    with pytest.raises(CheckpointError, match="header claims"):
        from_hf(hf_folder)
