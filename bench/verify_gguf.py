"""Our GGUF files in llama.cpp itself (through llama-cpp-python), against our own model.

For each model (a checkpoint or run directory given, and/or ``--tiny``: a tiny llama with
the gpt4 split pattern and a tiny gpt2, trained here for a few seconds) it exports f32 and
q8_0 files and checks:

1. token ids: llama.cpp's tokenizer on 1,000 Unicode strings (scripts, emoji with ZWJ and
   skin tones, combining marks, control characters, whitespace runs, special tokens) gives
   our ids, string for string (required: identical);
2. f32 logits over 256 tokens (in windows of the context length) against our forward
   pass (required: max |delta| <= 1e-3; llama.cpp's KV cache set to f32). For gpt2,
   llama.cpp's CPU GELU reads a float16 table: the limit applies with that table
   emulated in our GELU, and the difference with our exact GELU is printed beside it;
3. q8_0: a 32-token greedy continuation in llama.cpp against ours (on the float32 model
   and on the dequantised q8_0 weights); llama.cpp also quantises activations to 8 bits
   in its q8_0 matrix products, so this is reported with the logits' difference;
4. a chat model: a chat completion through the file's own template, with no stop
   settings given, must end at <|end|> (finish_reason "stop") with our greedy answer.

    python bench/verify_gguf.py runs/default/sft          # a trained run
    python bench/verify_gguf.py --tiny                    # the tiny test models

Needs llama-cpp-python (``CMAKE_ARGS="-DLLAVA_BUILD=OFF" pip install llama-cpp-python``:
it builds llama.cpp, 10-20 minutes on 2 cores) and the ``gguf`` extra. Exits 1 when a
required check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scratchlm.chat import reply
from scratchlm.chat_format import CHAT_SPECIAL_TOKENS
from scratchlm.checkpoint import load_model
from scratchlm.config import ModelConfig, preset
from scratchlm.export import from_gguf, to_gguf
from scratchlm.model import KVCache, TransformerLM
from scratchlm.tokenizer import BPETokenizer, train_bpe
from scratchlm.tokenizer.pretokenize import GPT4_PATTERN

N_STRINGS, N_LOGIT_TOKENS, N_GREEDY = 1_000, 256, 32
LOGIT_TOL = 1e-3
PIECES = [
    "Hello",
    " world",
    "It's",
    " we'll",
    " DON'T",
    "'S",
    " I'm",
    "1234567",
    " 3.14",
    "日本語のテキスト",
    "東京",
    "한국어",
    "Ελληνικά",
    " русский",
    " عربى",
    " हिन्दी",
    "ไทย",
    "😀",
    "👍🏽",
    "👨\u200d👩\u200d👧",
    "🤖",
    "🇫🇷",
    "e\u0301",
    "café",
    "naïve",
    "ﬁ",
    "Ǆ",
    "½",
    "²",
    "\x00",
    "\x01",
    "\x07",
    "\x1b[0m",
    "\x7f",
    "\x85",
    "\u2028",
    "\ufeff",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "\u00a0",
    "\u3000",
    " \n ",
    "...",
    "!!!",
    "<|endoftext|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|system|>",
    "<|end",
    "|>",
    "def f(a, b):",
    "x=[1,2];",
    "ſ",
    "K\u212a",
    "--",
    "$",
    "¿Qué?",
    "Ünïcödé",
]
TINY_TEXT = (
    "Once upon a time there was a little robot who liked to count the stars. "
    "Every night the robot climbed the hill and counted: one star, two stars, three. "
    "<|user|>What does the robot count?<|end|><|assistant|>The stars.<|end|>\n"
    "Café, naïve, 日本語, emoji 🤖 and tabs\tand newlines\n"
)


def unicode_sample(n: int, seed: int = 0) -> list[str]:
    """``n`` strings of 1-12 pieces of PIECES and random code points (any plane, no
    surrogates), with a fixed seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.25:
                cp = rng.choice(
                    [
                        rng.randint(0x20, 0x2FF),
                        rng.randint(0x300, 0xD7FF),
                        rng.randint(0xE000, 0xFFFD),
                        rng.randint(0x10000, 0x3134F),
                    ]
                )
                parts.append(chr(cp))
            else:
                parts.append(rng.choice(PIECES))
        out.append("".join(parts))
    return out


def check_ids(llm, tok: BPETokenizer) -> bool:
    sample = unicode_sample(N_STRINGS)
    bad = [
        t
        for t in sample
        if llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) != tok.encode(t)
    ]
    print(f"  ids: {N_STRINGS - len(bad)}/{N_STRINGS} strings identical")
    for t in bad[:3]:
        theirs = llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)
        print(f"    differs: {t!r}\n      llama.cpp {theirs}\n      scratchlm {tok.encode(t)}")
    return not bad


@contextlib.contextmanager
def llama_cpp_gelu() -> Iterator[None]:
    """Our GELU computed as llama.cpp's CPU backend does: through a table of float16
    inputs and outputs (GGML_GELU_FP16), exact beyond |x| >= 10. Patches torch's F.gelu,
    which GeluMLP calls, for the duration."""
    exact = F.gelu

    def tabled(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        y = exact(x.half().float(), approximate=approximate).half().float()
        return torch.where(x >= 10, x, torch.where(x <= -10, torch.zeros_like(x), y))

    F.gelu = tabled
    try:
        yield
    finally:
        F.gelu = exact


@torch.no_grad()
def max_logit_delta(llm, model: TransformerLM, windows: list[list[int]]) -> float:
    worst = 0.0
    for window in windows:
        llm.reset()
        llm.eval(window)
        theirs = np.asarray(llm.scores[: len(window)], dtype=np.float32)
        ours = model(torch.tensor([window]))[0].numpy()
        worst = max(worst, float(np.abs(theirs - ours).max()))
    return worst


@torch.no_grad()
def check_logits(llm, model: TransformerLM, tok: BPETokenizer) -> bool:
    """Max |delta| over the logits of 256 tokens. For gpt2, llama.cpp computes GELU
    through a float16 table: the requirement applies with that table emulated in ours,
    and the plain difference is shown beside it."""
    ctx = model.config.context_length
    text = " ".join(unicode_sample(200, seed=1))
    ids = tok.encode(text)[:N_LOGIT_TOKENS]
    windows = [ids[start : start + ctx] for start in range(0, len(ids), ctx)]
    worst = max_logit_delta(llm, model, windows)
    note = ""
    if model.config.ffn == "gelu":
        plain = worst
        with llama_cpp_gelu():
            worst = max_logit_delta(llm, model, windows)
        note = f" with llama.cpp's float16 GELU table emulated; {plain:.2e} with our exact GELU"
    ok = worst <= LOGIT_TOL
    print(
        f"  f32 logits over {len(ids)} tokens (windows of {ctx}): max |delta| = {worst:.2e}"
        f"{note} ({'ok' if ok else 'FAIL'}, limit {LOGIT_TOL:g})"
    )
    return ok


@torch.no_grad()
def greedy(model: TransformerLM, prompt: list[int], n: int) -> list[int]:
    cache = KVCache.for_model(model.config, batch_size=1)
    logits = model(torch.tensor([prompt]), cache, last_only=True)
    out: list[int] = []
    for _ in range(n):
        out.append(int(logits[0, -1].argmax()))
        logits = model(torch.tensor([[out[-1]]]), cache)
    return out


def llama_greedy(llm, prompt: list[int], n: int) -> list[int]:
    llm.reset()
    out = []
    for token in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == n:
            break
    return out


@torch.no_grad()
def check_q8(llm, model: TransformerLM, q8_model: TransformerLM, tok: BPETokenizer, prompt: str):
    ids = tok.encode(prompt)
    n = min(N_GREEDY, model.config.context_length - len(ids))
    theirs, ours, deq = llama_greedy(llm, ids, n), greedy(model, ids, n), greedy(q8_model, ids, n)
    llm.reset()
    llm.eval(ids)
    delta = np.abs(np.asarray(llm.scores[: len(ids)]) - q8_model(torch.tensor([ids]))[0].numpy())
    same = sum(a == b for a, b in zip(theirs, ours, strict=True))
    print(
        f"  q8_0 greedy {n} tokens from {prompt!r}: llama.cpp = ours (f32) "
        f"{'yes' if theirs == ours else f'no ({same}/{n} positions)'}, = ours (dequantised "
        f"q8_0) {'yes' if theirs == deq else 'no'}; max |delta logits| vs dequantised "
        f"{delta.max():.3f}"
    )
    print(f"    llama.cpp: {tok.decode(theirs)!r}")
    return theirs == ours


def check_chat(llm, model: TransformerLM, tok: BPETokenizer, question: str) -> bool:
    messages = [{"role": "user", "content": question}]
    ours = reply(model, tok, messages, temperature=0, max_new_tokens=64)
    got = llm.create_chat_completion(
        messages=messages, temperature=0.0, top_k=1, max_tokens=64, repeat_penalty=1.0
    )
    choice = got["choices"][0]
    text = choice["message"]["content"]
    ok = choice["finish_reason"] == "stop" and text == ours
    print(
        f"  chat through the embedded template: finish_reason={choice['finish_reason']!r}, "
        f"{got['usage']['completion_tokens']} tokens, same text as ours: "
        f"{'yes' if text == ours else 'no'} ({'ok' if ok else 'FAIL'})\n    {text!r}"
    )
    return ok


def verify(
    name: str,
    model: TransformerLM,
    tok: BPETokenizer,
    folder: Path,
    prompt: str,
    question: str | None,
) -> bool:
    from llama_cpp import GGML_TYPE_F32, Llama  # only here: the script's one reason to exist

    model = model.float().eval()
    print(
        f"{name}: {model.config.position} / {tok.pattern[:24]!r}..., "
        f"{model.num_parameters():,} parameters"
    )
    files = {d: to_gguf(model, tok, folder / f"{name}-{d}.gguf", dtype=d) for d in ("f32", "q8_0")}
    # llama.cpp keeps its KV cache in f16 by default: f32 here, to compare f32 with f32.
    opts = dict(
        n_ctx=model.config.context_length,
        verbose=False,
        n_threads=2,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
    )
    f32 = Llama(model_path=str(files["f32"]), logits_all=True, **opts)
    ok = check_ids(f32, tok) and True
    ok = check_logits(f32, model, tok) and ok
    if question is not None and all(t in tok.special_tokens for t in CHAT_SPECIAL_TOKENS):
        ok = check_chat(f32, model, tok, question) and ok
    q8 = Llama(model_path=str(files["q8_0"]), logits_all=True, **opts)
    check_q8(q8, model, from_gguf(files["q8_0"])[0], tok, prompt)
    f32.close()  # now, not at interpreter exit, when llama.cpp's bindings are gone
    q8.close()
    return ok


def tiny_models(folder: Path) -> list[tuple[str, TransformerLM, BPETokenizer]]:
    """A tiny llama (GQA, tied, gpt4 pattern) and gpt2 (gpt2 pattern), each trained for
    200 steps on TINY_TEXT so that its continuations are confident."""
    corpus = folder / "tiny.txt"
    corpus.write_text(TINY_TEXT * 20, encoding="utf-8")
    specials = ["<|endoftext|>", *CHAT_SPECIAL_TOKENS]
    out = []
    for name, pattern in (("tiny-llama", GPT4_PATTERN), ("tiny-gpt2", None)):
        kw = {} if pattern is None else {"pattern": pattern}
        vocab, merges = train_bpe(corpus, 320, specials[:1], num_workers=1, **kw)
        tok = BPETokenizer(vocab, merges, specials, **kw)
        size = dict(vocab_size=336, d_model=64, n_layers=2, n_heads=4)
        config = (
            ModelConfig(context_length=128, n_kv_heads=2, d_ff=96, tie_embeddings=True, **size)
            if pattern
            else preset("gpt2-classic", context_length=128, **size)
        )
        torch.manual_seed(0)
        model = TransformerLM(config)
        data = torch.tensor(tok.encode(TINY_TEXT * 20))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(200):
            starts = torch.randint(0, len(data) - 65, (8,), generator=g).tolist()
            x = torch.stack([data[s : s + 64] for s in starts])
            y = torch.stack([data[s + 1 : s + 65] for s in starts])
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
        out.append((name, model.eval(), tok))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", help="checkpoint or run directories")
    parser.add_argument("--tiny", action="store_true", help="also the tiny test models")
    parser.add_argument("--question", default="What is the sun?", help="the chat question")
    parser.add_argument("--prompt", default="The sun is", help="the greedy prompt")
    args = parser.parse_args(argv)
    try:
        import llama_cpp
    except ImportError:
        print(
            "llama_cpp is not installed: CMAKE_ARGS='-DLLAVA_BUILD=OFF' pip install "
            "llama-cpp-python",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(2)
    print(f"llama-cpp-python {llama_cpp.__version__}, torch {torch.__version__}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for path in args.checkpoints:
            model, tok = load_model(path)
            ok = verify(Path(path).name, model, tok, folder, args.prompt, args.question) and ok
        if args.tiny:
            for name, model, tok in tiny_models(folder):
                ok = (
                    verify(
                        name, model, tok, folder, "Once upon a time", "What does the robot count?"
                    )
                    and ok
                )
    print("all required checks passed" if ok else "SOME REQUIRED CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
