"""GGUF export and import on tiny random models built here.

Our files are read back by ``transformers`` (``gguf_file=``, which dequantises through
gguf-py): the same token ids on a Unicode sample and the same logits to 1e-5 in float32;
``from_gguf`` gives back the exact model and tokenizer; Q8_0 stays close enough to decode
the same greedy continuation. llama.cpp itself is checked by bench/verify_gguf.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers loads gguf_file= through it


from scratchlm.chat_format import CHAT_SPECIAL_TOKENS, CHAT_TEMPLATE  # noqa: E402
from scratchlm.checkpoint import load_model, save_checkpoint  # noqa: E402
from scratchlm.cli import main  # noqa: E402
from scratchlm.config import ModelConfig, preset  # noqa: E402
from scratchlm.errors import ConfigError, ScratchLMError, TokenizerError  # noqa: E402
from scratchlm.export import from_gguf, to_gguf  # noqa: E402
from scratchlm.export.gguf_arch import permute_rows, unpermute_rows  # noqa: E402
from scratchlm.model import KVCache, TransformerLM  # noqa: E402
from scratchlm.tokenizer import BPETokenizer, CharTokenizer, train_bpe  # noqa: E402
from scratchlm.tokenizer.pretokenize import GPT4_PATTERN  # noqa: E402

EOT = "<|endoftext|>"
SPECIALS = [EOT, *CHAT_SPECIAL_TOKENS]
MERGES_VOCAB = 320  # 256 bytes + 64 merges; the specials follow
ROWS = 336  # embedding rows: more than the tokenizer's ids, as padded vocabularies have
TOL = 1e-5
# Q8_0 against float32 on the trained test model (``trained``), over SAMPLE's first 64
# tokens: measured max |dlogit| 0.13, logits' standard deviation 1.6.
Q8_TOL = 0.25
TEXT = (
    "Once upon a time there was a little robot who liked to count the stars. "
    "Every night the robot climbed the hill and counted: one star, two stars, three. "
    "Café, naïve, 日本語, emoji 🤖 and tabs\tand newlines\n"
) * 20
SAMPLE = [
    "The quick brown fox. It's 2024, and 1234567 numbers! We'll see: they're here.\n",
    "Hello,   world!\tTabs\tand  double  spaces.\r\nWindows line\r\n",
    "日本語のテキストです。東京は大きい都市です。\n",
    "Emoji: 😀👍🏽 👨\u200d👩\u200d👧 and café, naïve, e\u0301 (combining), Ωμέγα.\n",
    "Control: \x01\x07\x1b[0m done\n",
    f"{EOT}Second document starts here.{EOT}{EOT}Third one, isn't it?\n",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa " + " " * 60 + "x\n",
    "<|system|>Be brief.<|end|><|user|>Hi 👋🏽<|end|><|assistant|>Hello!<|end|>",
    "\x00\x01\x7f \u00a0\u3000 e\u0301 ﬁ Ǆ ½ ² 한국어 Ελληνικά русский عربى हिन्दी",
]


def _tokenizer(tmp_path_factory, pattern: str | None = None) -> BPETokenizer:
    corpus = tmp_path_factory.mktemp("corpus") / "text.txt"
    corpus.write_text(TEXT + "".join(SAMPLE).replace("\x00", ""), encoding="utf-8")  # no NUL: text
    kwargs = {} if pattern is None else {"pattern": pattern}
    vocab, merges = train_bpe(corpus, MERGES_VOCAB, [EOT], num_workers=1, **kwargs)
    return BPETokenizer(vocab, merges, SPECIALS, **kwargs)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> BPETokenizer:
    return _tokenizer(tmp_path_factory)


def _model(config: ModelConfig, seed: int = 1) -> TransformerLM:
    """Random weights everywhere, norms near one, a large enough output scale that
    the next token is a clear choice (as in a trained model)."""
    torch.manual_seed(seed)
    model = TransformerLM(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_((0.3 if "embed" in name or "lm_head" in name else 0.1) * noise)
    return model.eval()


@pytest.fixture(scope="module")
def trained(tokenizer) -> TransformerLM:
    """The llama test model trained for 150 steps on TEXT: confident, as a trained model
    is (on random weights the top two logits are often closer than Q8_0's error)."""
    torch.manual_seed(0)
    model = TransformerLM(_llama(False).config)
    data = torch.tensor(tokenizer.encode(TEXT))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        starts = torch.randint(0, len(data) - 65, (8,), generator=g).tolist()
        x = torch.stack([data[s : s + 64] for s in starts])
        y = torch.stack([data[s + 1 : s + 65] for s in starts])
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _llama(tied: bool, **overrides) -> TransformerLM:
    config = ModelConfig(
        vocab_size=ROWS,
        context_length=64,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,  # grouped-query attention
        d_ff=96,
        rope_theta=5_000.0,
        tie_embeddings=tied,
        **overrides,
    )
    return _model(config)


def _gpt2(tied: bool = True) -> TransformerLM:
    # transformers reads gpt2.context_length as n_ctx and keeps n_positions = 1024.
    config = preset(
        "gpt2-classic", vocab_size=ROWS, d_model=64, n_layers=2, n_heads=4, tie_embeddings=tied
    )
    return _model(config, seed=2)


def _hf(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tok


@torch.no_grad()
def _greedy(model: TransformerLM, prompt: list[int], n: int) -> list[int]:
    cache = KVCache.for_model(model.config, batch_size=1)
    logits = model(torch.tensor([prompt]), cache, last_only=True)
    out: list[int] = []
    for _ in range(n):
        out.append(int(logits[0, -1].argmax()))
        logits = model(torch.tensor([[out[-1]]]), cache)
    return out


def _ids(tok: BPETokenizer) -> torch.Tensor:
    ids = tok.encode(" ".join(SAMPLE))[:64]
    return torch.tensor([ids])


# ------------------------------------------------------------- transformers reads ours


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_llama_export_loads_in_transformers_with_same_ids_and_logits(
    tmp_path, tokenizer, tied, one_thread
):
    ours = _llama(tied)
    path = to_gguf(ours, tokenizer, tmp_path / "m.gguf")
    hf, hf_tok = _hf(path)
    for text in SAMPLE:
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    ids = _ids(tokenizer)
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= TOL
    assert hf_tok.eos_token == "<|end|>" and hf_tok.bos_token == EOT
    assert hf_tok.chat_template == CHAT_TEMPLATE


def test_gpt2_export_loads_in_transformers_with_same_logits(tmp_path, tokenizer, one_thread):
    ours = _gpt2()
    path = to_gguf(ours, tokenizer, tmp_path / "g.gguf")
    hf, hf_tok = _hf(path)
    assert hf.config.model_type == "gpt2"
    assert hf_tok(SAMPLE[0], add_special_tokens=False)["input_ids"] == tokenizer.encode(SAMPLE[0])
    ids = _ids(tokenizer)
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= TOL


def test_gpt4_pattern_is_written_as_llama_bpe(tmp_path_factory, tmp_path, one_thread):
    tok = _tokenizer(tmp_path_factory, GPT4_PATTERN)
    path = to_gguf(_llama(False), tok, tmp_path / "m.gguf")
    assert _metadata(path)["tokenizer.ggml.pre"] == "llama-bpe"
    hf_tok = _hf(path)[1]
    for text in SAMPLE:
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert from_gguf(path)[1].pattern == GPT4_PATTERN


# -------------------------------------------------------------- what the file holds


def _metadata(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: f.contents() for name, f in reader.fields.items()}


def test_file_holds_what_a_runtime_needs(tmp_path, tokenizer):
    meta = _metadata(to_gguf(_llama(False), tokenizer, tmp_path / "m.gguf"))
    specials = tokenizer.special_tokens
    assert meta["general.architecture"] == "llama"
    assert (meta["llama.block_count"], meta["llama.attention.head_count_kv"]) == (2, 2)
    assert meta["llama.rope.freq_base"] == 5_000.0 and meta["llama.rope.dimension_count"] == 16
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == ROWS
    assert {tokens[i]: types[i] for i in specials.values()} == {t: 3 for t in specials}
    assert tokens[tokenizer.token_to_id(b" the")] == "Ġthe" and types[0] == 1
    assert types[tokenizer.vocab_size :] == [5] * (ROWS - tokenizer.vocab_size)  # unused rows
    assert meta["tokenizer.ggml.bos_token_id"] == specials[EOT]
    assert meta["tokenizer.ggml.eos_token_id"] == specials["<|end|>"]
    assert meta["tokenizer.ggml.eot_token_id"] == specials["<|end|>"]
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == CHAT_TEMPLATE


def test_q_k_permutation_is_llama_cpp_layout_and_inverts():
    w = np.arange(8 * 3).reshape(8, 3)  # 2 heads of 4 rows: halves (0,1),(2,3) per head
    p = permute_rows(w, 2)
    assert p[:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]  # rows 0,2,1,3 | 4,6,5,7
    assert np.array_equal(unpermute_rows(p, 2), w)


# ----------------------------------------------------------------------- round trips


@pytest.mark.parametrize("arch", ["llama", "llama-tied", "gpt2"])
def test_export_import_round_trip_is_exact(tmp_path, tokenizer, arch):
    ours = _gpt2() if arch == "gpt2" else _llama(tied=arch == "llama-tied")
    back, tok = from_gguf(to_gguf(ours, tokenizer, tmp_path / "m.gguf"))
    assert back.config.resolved() == dataclasses.replace(ours.config.resolved(), dropout=0.0)
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (back.lm_head.weight is back.embed_tokens.weight) == ours.config.tie_embeddings
    assert (tok.vocab, tok.merges, tok.pattern) == (
        tokenizer.vocab,
        tokenizer.merges,
        tokenizer.pattern,
    )
    assert tok.special_tokens == tokenizer.special_tokens and tok.metadata == tokenizer.metadata


def test_f16_round_trip_is_exact_in_half_precision(tmp_path, tokenizer):
    ours = _llama(False)
    back, _ = from_gguf(to_gguf(ours, tokenizer, tmp_path / "m.gguf", dtype="f16"))
    for name, w in ours.state_dict().items():
        expected = w.half().float() if w.dim() == 2 else w  # norms stay float32
        assert torch.equal(back.state_dict()[name], expected), name


def test_q8_0_logits_close_and_greedy_continuation_equal(tmp_path, tokenizer, trained):
    ours = trained
    path = to_gguf(ours, tokenizer, tmp_path / "m.gguf", dtype="q8_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    back, _ = from_gguf(path)
    ids = _ids(tokenizer)
    with torch.no_grad():
        diff = (ours(ids) - back(ids)).abs().max().item()
        hf_diff = (back(ids) - _hf(path)[0](ids).logits).abs().max().item()
    assert 0 < diff <= Q8_TOL
    assert hf_diff <= TOL  # transformers dequantises the same bytes to the same weights
    prompt = tokenizer.encode("Once upon a time the robot")
    expected = _greedy(ours, prompt, 32)
    assert tokenizer.decode(expected)[:40] in TEXT  # it learned the text
    assert _greedy(back, prompt, 32) == expected


# ------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (dict(position="cope"), "position='cope'"),
        (dict(position="none"), "position='none'"),
        (dict(norm="dyt"), "norm='dyt'"),
        (dict(ffn="gelu"), "ffn='gelu'"),
        (dict(qk_norm=True), "qk_norm=True"),
        (dict(shared_depth=2), "shared_depth=2"),
        (dict(bias=True), "bias=True"),
        (dict(ffn="relu2"), "ffn='relu2'"),
        (dict(logit_softcap=30.0), "logit_softcap=30.0"),
    ],
)
def test_unrepresentable_llama_options_are_refused_by_name(tmp_path, tokenizer, overrides, named):
    model = TransformerLM(
        ModelConfig(vocab_size=ROWS, d_model=32, n_layers=1, n_heads=2, **overrides)
    )
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")) as e:
        to_gguf(model, tokenizer, tmp_path / "m.gguf")
    assert "\n" not in str(e.value) and not (tmp_path / "m.gguf").exists()


def test_soft_capped_gpt2_is_refused(tmp_path, tokenizer):
    config = preset("gpt2-classic", vocab_size=ROWS, d_model=32, n_layers=1, n_heads=2)
    with pytest.raises(ConfigError, match=r"logit_softcap=30\.0"):
        to_gguf(TransformerLM(config.replace(logit_softcap=30.0)), tokenizer, tmp_path / "m.gguf")


def test_zero_init_proj_exports_exactly(tmp_path, tokenizer, one_thread):
    # Only initialisation changes: the (randomised) weights go out and back bit for bit,
    # and transformers computes the same logits.
    ours = _llama(False, zero_init_proj=True)
    path = to_gguf(ours, tokenizer, tmp_path / "m.gguf")
    back, _ = from_gguf(path)
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    hf, _ = _hf(path)
    ids = _ids(tokenizer)
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() <= TOL


def test_cli_refuses_a_relu2_model_in_one_line(tmp_path, tokenizer, capsys):
    ckpt = save_checkpoint(_llama(True, ffn="relu2"), None, 0, tmp_path / "c",
                           tokenizer=tokenizer)  # fmt: skip
    assert main(["export", "gguf", str(ckpt), str(tmp_path / "m.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchlm: error: ") and err.count("\n") == 1
    assert "ffn='relu2' (Llama needs 'swiglu')" in err and not (tmp_path / "m.gguf").exists()


def test_gpt2_with_grouped_query_attention_is_refused(tmp_path, tokenizer):
    config = preset(
        "gpt2-classic", vocab_size=ROWS, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1
    )
    with pytest.raises(ConfigError, match="n_kv_heads=1"):
        to_gguf(TransformerLM(config), tokenizer, tmp_path / "m.gguf")


def test_tokenizers_llama_cpp_cannot_encode_are_refused(tmp_path, tokenizer):
    model = _llama(False)
    odd = BPETokenizer(tokenizer.vocab, tokenizer.merges, SPECIALS, pattern=r"\w+|\W")
    with pytest.raises(TokenizerError, match=r"no llama\.cpp pre-tokenizer"):
        to_gguf(model, odd, tmp_path / "m.gguf")
    with pytest.raises(TokenizerError, match="byte-level BPE"):
        to_gguf(model, CharTokenizer("abc"), tmp_path / "m.gguf")
    with pytest.raises(ConfigError, match="unknown GGUF dtype 'q4_0'"):
        to_gguf(model, tokenizer, tmp_path / "m.gguf", dtype="q4_0")


def _write(path, arch: str, fill) -> None:
    writer = gguf.GGUFWriter(path, arch)
    fill(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_import_refuses_other_architectures_types_and_broken_files(tmp_path, tokenizer):
    _write(tmp_path / "qwen.gguf", "qwen2", lambda w: None)
    with pytest.raises(ConfigError, match="architecture 'qwen2' is not supported"):
        from_gguf(tmp_path / "qwen.gguf")

    def q4(w):
        w.add_tensor(
            "token_embd.weight",
            np.zeros((4, 18), np.uint8),
            raw_dtype=gguf.GGMLQuantizationType.Q4_0,
        )

    _write(tmp_path / "q4.gguf", "llama", q4)
    with pytest.raises(ConfigError, match=r"tensor type.*Q4_0"):
        from_gguf(tmp_path / "q4.gguf")

    good = to_gguf(_llama(False), tokenizer, tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 4)
    # A header declaring a billion tensors is refused before gguf-py walks it.
    huge = b"GGUF" + (3).to_bytes(4, "little") + (10**9).to_bytes(8, "little") + bytes(8)
    (tmp_path / "huge.gguf").write_bytes(huge)
    for name in ("cut.gguf", "junk.gguf", "huge.gguf", "missing.gguf"):
        with pytest.raises(ScratchLMError) as e:
            from_gguf(tmp_path / name)
        assert "\n" not in str(e.value)


def test_import_checks_shapes_against_the_metadata(tmp_path, tokenizer):
    path = to_gguf(_llama(False), tokenizer, tmp_path / "m.gguf")
    data = bytearray(path.read_bytes())
    key = b"llama.feed_forward_length"
    at = data.index(key) + len(key) + 4  # after the name: the value type, then the value
    data[at : at + 4] = (97).to_bytes(4, "little")
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    with pytest.raises(ScratchLMError, match=r"ffn_gate\.weight has shape .* implies"):
        from_gguf(tmp_path / "bad.gguf")


# ------------------------------------------------------------------------------ CLI


def test_cli_exports_and_imports(tmp_path, tokenizer, capsys):
    ckpt = save_checkpoint(_llama(True), None, 0, tmp_path / "ckpt", tokenizer=tokenizer)
    out = tmp_path / "m.gguf"
    assert main(["export", "gguf", str(ckpt), str(out), "--dtype", "f16"]) == 0
    assert main(["import", "gguf", str(out), str(tmp_path / "back")]) == 0
    model, tok = load_model(tmp_path / "back")
    assert model.config.tie_embeddings and tok.special_tokens == tokenizer.special_tokens
    assert "wrote GGUF file" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "gguf", "{tmp}/nowhere", "{tmp}/m.gguf"], "nowhere"),
        (["export", "gguf", "{tmp}/x", "{tmp}/m.gguf", "--dtype", "q4"], "unknown GGUF dtype"),
        (["import", "gguf", "{tmp}/nowhere.gguf", "{tmp}/ckpt"], "is not a file"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchlm: error: ") and err.count("\n") == 1 and message in err
