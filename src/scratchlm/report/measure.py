"""What a report measures with the run's model: decode speed (fp32 and int8 weights),
a few greedy samples, and the parity of an export with the checkpoint it came from.

Each takes a few seconds on a small model on a CPU; ``--no-speed`` skips the speed
measurement (the slowest part, and the only one that depends on the machine's load).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path

import torch

from scratchlm.chat import reply
from scratchlm.chat_format import END_OF_TURN
from scratchlm.config import SampleConfig
from scratchlm.errors import ScratchLMError
from scratchlm.export.hf import from_hf
from scratchlm.generate import generate_ids
from scratchlm.model import TransformerLM, prepare_for_inference
from scratchlm.report.schema import DecodeSpeed, ExportFacts, Sample
from scratchlm.textgen import generate
from scratchlm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# Decode speed: a prompt of this many tokens, then this many greedy tokens, timed from
# the first generated token to the last (so the prompt's forward pass is not counted).
SPEED_PROMPT_TOKENS = 16
SPEED_NEW_TOKENS = 64
SPEED_REPEATS = 5  # the best of these: the least disturbed by other work on the machine
# Samples: prompts when the run's settings name none, and the tokens of each answer.
PRETRAIN_PROMPTS = ("The", "Water boils", "Plants")
CHAT_PROMPTS = ("Hello! Who are you?", "Why is the sky blue?", "What is the capital of France?")
SAMPLE_TOKENS = 48
MAX_SAMPLES = 3
# Export parity: the logits of this many token ids, ours against the export's.
PARITY_TOKENS = 32


def _decode_tokens_per_s(model: torch.nn.Module, prompt: list[int], new_tokens: int) -> float:
    """Tokens per second of one greedy decode after ``prompt`` (no stop ids)."""
    settings = SampleConfig(temperature=0, max_new_tokens=new_tokens)
    stamps = [time.perf_counter() for _ in generate_ids(model, [prompt], settings)]
    assert len(stamps) == new_tokens, f"decode stopped after {len(stamps)} of {new_tokens}"
    return (new_tokens - 1) / (stamps[-1] - stamps[0])


def decode_speed(
    model: TransformerLM,
    *,
    prompt_tokens: int = SPEED_PROMPT_TOKENS,
    new_tokens: int = SPEED_NEW_TOKENS,
    repeats: int = SPEED_REPEATS,
) -> DecodeSpeed:
    """Batch-1 greedy decode speed of ``model`` prepared for inference as `scratchlm
    chat` prepares it, in float32 and with int8 weights: the best of ``repeats`` runs
    after a warm-up. ``model`` itself is left as it was. The prompt is fixed ids (no
    tokenizer needed); the context must hold prompt and answer."""
    assert new_tokens >= 2, "a speed needs at least two timed tokens"
    c = model.config
    new_tokens = min(new_tokens, c.context_length - prompt_tokens)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    prompt = [(7 * i + 1) % c.vocab_size for i in range(prompt_tokens)]
    speeds = {}
    # CPU seconds this process got per wall second while measuring: about the thread
    # count when the cores are ours, less when other work took turns (schema.is_busy).
    wall, cpu = time.perf_counter(), time.process_time()
    for int8 in (False, True):
        prepared = prepare_for_inference(copy.deepcopy(model).float(), int8=int8)
        _decode_tokens_per_s(prepared, prompt, new_tokens)  # warm-up: caches, thread pool
        speeds[int8] = max(
            _decode_tokens_per_s(prepared, prompt, new_tokens) for _ in range(repeats)
        )
    cpu_per_wall = (time.process_time() - cpu) / (time.perf_counter() - wall)
    return DecodeSpeed(
        fp32_tokens_per_s=speeds[False],
        int8_tokens_per_s=speeds[True],
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        repeats=repeats,
        threads=torch.get_num_threads(),
        load_average=load,
        cpu_count=os.cpu_count(),
        cpu_per_wall=cpu_per_wall,
    )


def greedy_samples(
    model: TransformerLM, tokenizer: Tokenizer, prompts: list[str], *, chat: bool
) -> list[Sample]:
    """Greedy answers (``chat``: as `scratchlm chat --temperature 0` gives them) or
    continuations of ``prompts`` (at most MAX_SAMPLES); the run's own prompts come
    first, then the defaults of its phase."""
    defaults = CHAT_PROMPTS if chat else PRETRAIN_PROMPTS
    chosen = list(dict.fromkeys([*prompts, *defaults]))[:MAX_SAMPLES]
    prepared = prepare_for_inference(model, in_place=False)
    if chat:
        texts = [
            reply(
                prepared,
                tokenizer,
                [{"role": "user", "content": p}],
                temperature=0,
                max_new_tokens=SAMPLE_TOKENS,
            )
            for p in chosen
        ]
    else:
        texts = generate(prepared, tokenizer, chosen, temperature=0, max_new_tokens=SAMPLE_TOKENS)
    return [Sample(prompt=p, text=t, source="greedy") for p, t in zip(chosen, texts, strict=True)]


def has_chat_tokens(tokenizer: Tokenizer) -> bool:
    return END_OF_TURN in tokenizer.special_tokens


def _hf_logits(folder: Path, ids: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Logits of the export read by transformers when it is installed (what users run),
    else by scratchlm's own reader of HF folders."""
    try:  # deferred: transformers is an optional extra, and a slow import
        from transformers import AutoModelForCausalLM
    except ImportError:
        model, _ = from_hf(folder)
        with torch.inference_mode():
            return model(ids).float(), "scratchlm.export.from_hf (transformers not installed)"
    hf = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    with torch.inference_mode():
        return hf(ids).logits.float(), "transformers"


def export_parity(model: TransformerLM, export: ExportFacts, root: Path) -> ExportFacts:
    """``export`` with the largest |logit difference| between the checkpoint's model
    and the export read back, on fixed ids. GGUF files are listed only: reading them
    needs the gguf extra's reader (bench/verify_gguf.py checks them against llama.cpp)."""
    if export.format != "hf":
        export.note = "listed only: check a GGUF file with bench/verify_gguf.py"
        return export
    folder = Path(export.path) if Path(export.path).is_absolute() else root / export.path
    c = model.config
    ids = torch.tensor(
        [[(5 * i + 3) % c.vocab_size for i in range(min(PARITY_TOKENS, c.context_length))]]
    )
    try:
        theirs, reader = _hf_logits(folder, ids)
    except (ScratchLMError, OSError, ValueError) as e:
        log.warning("could not read the export %s back: %s", folder, e)
        export.note = f"could not be read back: {e}"
        return export
    with torch.inference_mode():
        ours = model.float()(ids).float()
    if theirs.shape != ours.shape:
        export.note = (
            f"logits of shape {tuple(theirs.shape)}, the checkpoint's {tuple(ours.shape)}: "
            "not this model's export"
        )
        return export
    export.max_abs_logit_diff = float((theirs - ours).abs().max())
    export.checked_with = reader
    return export
