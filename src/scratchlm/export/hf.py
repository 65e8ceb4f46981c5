"""Hugging Face transformers folders, both ways: ``to_hf`` and ``from_hf``.

A folder ``to_hf`` writes loads with ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` and nothing else::

    config.json              Llama or GPT-2 architecture, chosen by the position option
    generation_config.json   bos / eos ids (the tokenizer's <|endoftext|>; for a chat
                             model also <|end|>, so `generate` stops at the end of a turn)
    model.safetensors        weights under HF's names (the key maps in hf_llama, hf_gpt2)
    tokenizer.json, tokenizer_config.json, special_tokens_map.json

``position="rope"`` (with RMSNorm, SwiGLU, no bias) is ``LlamaForCausalLM``;
``position="learned"`` (with LayerNorm, GELU, biases, no grouped-query attention) is
``GPT2LMHeadModel``. Any other option is refused with a ConfigError naming it, never
approximated. ``from_hf`` reads the same two architectures from local files, and only
from safetensors: a pickle (``pytorch_model.bin``) can run code when loaded.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import load_file

from scratchlm.atomic import write_dir_atomically
from scratchlm.chat_format import END_OF_TURN
from scratchlm.checkpoint.files import save_tensors
from scratchlm.checkpoint.fits import check_config_fits
from scratchlm.checkpoint.header import read_header
from scratchlm.config import ModelConfig
from scratchlm.errors import ConfigError, OutputExistsError, ScratchLMError
from scratchlm.export import hf_gpt2, hf_llama
from scratchlm.export.hf_tokenizer import (
    EOS_CANDIDATES,
    PAD_CANDIDATES,
    hf_tokenizer_files,
    write_json_files,
)
from scratchlm.export.keymap import from_hf_tensors, to_hf_tensors
from scratchlm.model import TransformerLM
from scratchlm.model.inference import refuse_prepared
from scratchlm.tokenizer import BPETokenizer, Tokenizer, load_tokenizer

ARCHITECTURES: dict[str, ModuleType] = {
    hf_llama.MODEL_TYPE: hf_llama,
    hf_gpt2.MODEL_TYPE: hf_gpt2,
}
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


# ------------------------------------------------------------------------- export


def architecture_for(config: ModelConfig) -> ModuleType:
    """The HF architecture module (hf_llama or hf_gpt2) that represents ``config``
    exactly; ConfigError naming every option that stands in the way otherwise."""
    if config.position == "rope":
        arch = hf_llama
    elif config.position == "learned":
        arch = hf_gpt2
    else:
        raise ConfigError(
            f"position={config.position!r} has no Hugging Face architecture: export supports "
            "position='rope' (as Llama) and position='learned' (as GPT-2)"
        )
    problems = arch.unsupported(config)
    if problems:
        raise ConfigError(
            f"cannot export to Hugging Face {arch.ARCHITECTURE} "
            f"(chosen for position={config.position!r}): " + "; ".join(problems)
        )
    return arch


def to_hf(
    model: TransformerLM,
    tokenizer: BPETokenizer | None,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
) -> Path:
    """Write ``model`` (and ``tokenizer``, a byte-level BPETokenizer, or None to skip
    it) as a Hugging Face transformers folder at ``out_dir``; returns the folder.

    The folder is built under a temporary name and renamed into place; an existing
    ``out_dir`` is refused unless ``force``, and then replaced only once the new one is
    complete.
    """
    c = model.config
    refuse_prepared(model, "exported")
    arch = architecture_for(c)  # refuse before anything is written
    out = Path(out_dir)
    if out.exists() and not force:
        raise OutputExistsError(f"output directory {out} exists: choose another or pass --force")
    if tokenizer is not None and tokenizer.vocab_size > c.vocab_size:
        raise ScratchLMError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
            f"{c.vocab_size} embedding rows: they do not belong together"
        )
    bos, eos, pad = _special_ids(tokenizer)
    dtype = str(model.embed_tokens.weight.dtype).removeprefix("torch.")
    state, key_map = model.state_dict(), arch.key_map(c)
    tied = {"lm_head.weight"} if c.tie_embeddings else set()  # HF re-ties it on load
    mapped = {k for m in key_map for k in m.ours} | tied
    assert mapped == set(state), f"key map and model disagree: {sorted(mapped ^ set(state))}"
    tensors = to_hf_tensors(state, key_map)

    def fill(tmp: Path) -> None:
        if tokenizer is not None:
            files = hf_tokenizer_files(tokenizer, model_max_length=c.context_length)
            write_json_files(tmp, files)
        generation = {"bos_token_id": bos, "eos_token_id": eos}
        end_of_turn = tokenizer.special_tokens.get(END_OF_TURN) if tokenizer is not None else None
        if end_of_turn is not None:  # a chat model: `generate` ends an answer at its turn's end
            generation["eos_token_id"] = [i for i in (end_of_turn, eos) if i is not None]
        if pad is not None:
            generation["pad_token_id"] = pad
        write_json_files(
            tmp,
            {
                "config.json": arch.hf_config(c, bos, eos, dtype),
                "generation_config.json": generation,
            },
        )
        # transformers refuses safetensors files whose metadata lacks the format.
        save_tensors(tensors, tmp / WEIGHTS, metadata={"format": "pt"})  # mode 0644, not 0600

    return write_dir_atomically(out, fill, force=force)


def _special_ids(tokenizer: Tokenizer | None) -> tuple[int | None, int | None, int | None]:
    """bos, eos, pad ids as the tokenizer files name them: GPT-2's convention, one
    <|endoftext|> that separates documents is both bos and eos."""
    if tokenizer is None:
        return None, None, None

    specials = tokenizer.special_tokens
    eos = next((specials[t] for t in EOS_CANDIDATES if t in specials), None)
    pad = next((specials[t] for t in PAD_CANDIDATES if t in specials), None)
    return eos, eos, pad


# ------------------------------------------------------------------------- import


def from_hf(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.float32
) -> tuple[TransformerLM, Tokenizer]:
    """Load a local Hugging Face Llama- or GPT-2-architecture folder as
    ``(TransformerLM in eval mode, BPETokenizer)``.

    The folder needs config.json, safetensors weights (``model.safetensors``, or shards
    listed in ``model.safetensors.index.json``) and a tokenizer (``tokenizer.json``, or
    GPT-2's ``vocab.json`` + ``merges.txt``). Weights are cast to ``dtype``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ScratchLMError(f"{folder} is not a folder (expected a Hugging Face model folder)")
    hf = _read_config(folder)
    model_type = hf.get("model_type")
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise ConfigError(
            f"{folder}: model_type {model_type!r} (architectures {hf.get('architectures')}) is "
            f"not supported; scratchlm imports {', '.join(ARCHITECTURES)}"
        )
    config = arch.model_config(hf)
    tokenizer = load_tokenizer(folder)  # before the weights: a bad tokenizer fails fast
    if tokenizer.vocab_size > config.vocab_size:
        raise ScratchLMError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} ids but the model only "
            f"{config.vocab_size} embedding rows"
        )
    files = _weight_files(folder)
    # Sizes from config.json are held against the files' headers and this machine
    # before anything is allocated by them.
    check_config_fits(config, [read_header(f) for f in files], folder / "config.json")
    tensors = _read_weights(files)
    if arch is hf_gpt2:
        tensors = {hf_gpt2.normalize_key(k): t for k, t in tensors.items()}
    key_map = arch.key_map(config)
    expected = {m.hf for m in key_map}
    if config.tie_embeddings:
        expected.add("lm_head.weight")  # some checkpoints store the tied copy too
    unexpected = sorted(
        k for k in tensors if k not in expected and not k.endswith(arch.IGNORED_SUFFIXES)
    )
    if unexpected:
        raise ScratchLMError(
            f"{folder} has tensors a plain {arch.ARCHITECTURE} with this config.json does not: "
            f"{', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"
        )
    state = from_hf_tensors(tensors, key_map, str(folder))
    if config.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]

    model = TransformerLM(config)
    wanted = model.state_dict()
    for name, t in state.items():
        if t.shape != wanted[name].shape:
            raise ScratchLMError(
                f"{folder}: tensor for {name} has shape {tuple(t.shape)}, config.json "
                f"implies {tuple(wanted[name].shape)}"
            )
    model.load_state_dict(state, strict=True)
    model.to(dtype)
    return model.eval(), tokenizer


def _read_config(folder: Path) -> dict[str, Any]:
    file = folder / "config.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScratchLMError(
            f"{folder} has no config.json: not a Hugging Face model folder"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScratchLMError(f"cannot read {file}: {e}") from None
    if not isinstance(data, dict):
        raise ScratchLMError(f"{file} is not a JSON object")
    return data


def _weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors file(s); never a pickle."""
    if (folder / WEIGHTS).is_file():
        files = [folder / WEIGHTS]
    elif (folder / WEIGHTS_INDEX).is_file():
        files = _shards(folder)
    else:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ScratchLMError(
                f"{folder} has weights only as PyTorch pickles ({', '.join(pickles)}); scratchlm "
                "never loads pickles because unpickling can run arbitrary code. Convert them to "
                "safetensors with a tool you trust, e.g. in Python with transformers: "
                "AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst)"
            )
        raise ScratchLMError(f"{folder} has no {WEIGHTS} (or {WEIGHTS_INDEX} with shards)")
    return files


def _read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors ``files``."""
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors.update(load_file(file))
        except Exception as e:  # safetensors raises its own error types
            raise ScratchLMError(f"cannot read weights {file}: {e}") from None
    return tensors


def _shards(folder: Path) -> list[Path]:
    index = folder / WEIGHTS_INDEX
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ScratchLMError(f"cannot read the shard index {index}: {e}") from None
    for name in names:
        # Shards live beside the index: a path elsewhere is a damaged or hostile index.
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+\.safetensors", name):
            raise ScratchLMError(f"{index} names shard {name!r}, not a .safetensors file name")
        if not (folder / name).is_file():
            raise ScratchLMError(f"{index} lists shard {name}, which is missing")
    return [folder / n for n in names]
