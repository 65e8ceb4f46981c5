"""Exact interop with Hugging Face transformers, both ways, on tiny random models built here.

HF -> ours: a random ``LlamaForCausalLM`` / ``GPT2LMHeadModel`` saved with
``save_pretrained`` is read by ``from_hf``; ours -> HF: ``to_hf`` writes a folder that
``AutoModelForCausalLM`` / ``AutoTokenizer`` load. Either way the logits must agree to
1e-5 in float32 and greedy decoding with our KV cache must pick HF ``generate``'s tokens.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from safetensors.torch import load_file, save_file  # noqa: E402

from scratchlm.checkpoint import save_checkpoint  # noqa: E402
from scratchlm.cli import main  # noqa: E402
from scratchlm.config import ModelConfig, preset  # noqa: E402
from scratchlm.errors import ConfigError, OutputExistsError, ScratchLMError  # noqa: E402
from scratchlm.export import from_hf, to_hf  # noqa: E402
from scratchlm.export.hf_tokenizer import save_hf_tokenizer  # noqa: E402
from scratchlm.model import KVCache, TransformerLM  # noqa: E402
from scratchlm.tokenizer import BPETokenizer, train_bpe  # noqa: E402

EOT = "<|endoftext|>"
VOCAB = 300  # 256 bytes + 43 merges + <|endoftext|>
CONTEXT = 64
TOL = 1e-5
TEXT = (
    "Once upon a time there was a little robot who liked to count the stars. "
    "Every night the robot climbed the hill and counted: one star, two stars, three. "
    "Café, naïve, 日本語, emoji 🤖 and tabs\tand newlines\n"
) * 20


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> BPETokenizer:
    corpus = tmp_path_factory.mktemp("corpus") / "text.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    vocab, merges = train_bpe(corpus, VOCAB, [EOT], num_workers=1)
    tok = BPETokenizer(vocab, merges, [EOT])
    assert tok.vocab_size == VOCAB, tok.vocab_size
    return tok


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere, norms included (their default of ones would hide a
    norm weight mapped to the wrong place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def _hf_llama(tok: BPETokenizer, tied: bool) -> torch.nn.Module:
    eos = tok.special_tokens[EOT]
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5,
        rope_theta=5_000.0,
        tie_word_embeddings=tied,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    model = transformers.LlamaForCausalLM(config)
    _randomize(model)
    return model.eval()


def _hf_gpt2(tok: BPETokenizer, tied: bool = True) -> torch.nn.Module:
    eos = tok.special_tokens[EOT]
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=CONTEXT,
        n_embd=64,
        n_layer=2,
        n_head=4,
        tie_word_embeddings=tied,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    model = transformers.GPT2LMHeadModel(config)
    _randomize(model)
    return model.eval()


def _ours(tied: bool, **overrides) -> TransformerLM:
    config = ModelConfig(
        vocab_size=VOCAB,
        context_length=CONTEXT,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_ff=96,
        rope_theta=5_000.0,
        tie_embeddings=tied,
        **overrides,
    )
    model = TransformerLM(config)
    _randomize(model, seed=1)
    return model.eval()


def _ours_gpt2(tied: bool = True) -> TransformerLM:
    config = preset(
        "gpt2-classic",
        vocab_size=VOCAB,
        context_length=CONTEXT,
        d_model=64,
        n_layers=2,
        n_heads=4,
        tie_embeddings=tied,
    )
    model = TransformerLM(config)
    _randomize(model, seed=2)
    return model.eval()


def _save_hf(model: torch.nn.Module, tok: BPETokenizer, folder, **kwargs) -> None:
    save_hf_tokenizer(tok, folder)
    model.save_pretrained(folder, **kwargs)


def _random_ids(batch: int = 2, length: int = CONTEXT) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def _max_diff(ours: TransformerLM, hf: torch.nn.Module, ids: torch.Tensor) -> float:
    return (ours(ids) - hf(ids).logits).abs().max().item()


@torch.no_grad()
def _greedy(model: TransformerLM, prompt: list[int], n: int, eos: int) -> list[int]:
    """Greedy decoding with our KV cache: prefill the prompt, then one token at a time."""
    cache = KVCache.for_model(model.config, batch_size=1)
    logits = model(torch.tensor([prompt]), cache, last_only=True)  # (1, 1, V)
    out: list[int] = []
    for _ in range(n):
        token = int(logits[0, -1].argmax())
        out.append(token)
        if token == eos:
            break
        logits = model(torch.tensor([[token]]), cache)
    return out


@torch.no_grad()
def _hf_greedy(hf: torch.nn.Module, prompt: list[int], n: int, eos: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=n,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    return out[0, len(prompt) :].tolist()


def _check_generation(ours: TransformerLM, hf: torch.nn.Module, tok: BPETokenizer) -> None:
    eos = tok.special_tokens[EOT]
    prompt = tok.encode("Once upon a time the robot")
    expected = _hf_greedy(hf, prompt, 20, eos)
    assert len(expected) >= 5, expected  # a run worth comparing, not an immediate eos
    assert _greedy(ours, prompt, 20, eos) == expected


# ---------------------------------------------------------------- HF -> scratchlm


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_llama_from_hf_matches_logits_and_greedy_tokens(tmp_path, tokenizer, tied):
    hf = _hf_llama(tokenizer, tied)
    _save_hf(hf, tokenizer, tmp_path / "hf")
    ours, tok = from_hf(tmp_path / "hf")

    c = ours.config
    assert (c.position, c.norm, c.ffn, c.bias) == ("rope", "rmsnorm", "swiglu", False)
    assert (c.n_heads, c.n_kv_heads, c.d_ff, c.context_length) == (4, 2, 96, CONTEXT)
    assert (c.rope_theta, c.norm_eps, c.tie_embeddings) == (5_000.0, 1e-5, tied)
    assert (ours.lm_head.weight is ours.embed_tokens.weight) == tied
    assert not ours.training
    assert tok.encode(TEXT[:300]) == tokenizer.encode(TEXT[:300])
    assert _max_diff(ours, hf, _random_ids()) < TOL
    _check_generation(ours, hf, tokenizer)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_gpt2_from_hf_matches_logits_and_greedy_tokens(tmp_path, tokenizer, tied):
    hf = _hf_gpt2(tokenizer, tied)
    _save_hf(hf, tokenizer, tmp_path / "hf")
    ours, _ = from_hf(tmp_path / "hf")

    c = ours.config
    assert (c.position, c.norm, c.ffn, c.bias) == ("learned", "layernorm", "gelu", True)
    assert (c.d_ff, c.norm_eps, c.tie_embeddings) == (256, 1e-5, tied)
    assert _max_diff(ours, hf, _random_ids()) < TOL
    _check_generation(ours, hf, tokenizer)


def test_sharded_llama_checkpoint_is_read(tmp_path, tokenizer):
    hf = _hf_llama(tokenizer, tied=False)
    _save_hf(hf, tokenizer, tmp_path / "hf", max_shard_size="50KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    ours, _ = from_hf(tmp_path / "hf")
    assert _max_diff(ours, hf, _random_ids()) < TOL


def test_gpt2_checkpoint_in_openai_layout_is_read(tmp_path, tokenizer):
    """OpenAI's GPT-2 files name tensors without ``transformer.`` and keep the causal
    mask buffers ``attn.bias``; both are handled."""
    hf = _hf_gpt2(tokenizer)
    folder = tmp_path / "hf"
    _save_hf(hf, tokenizer, folder)
    tensors = load_file(folder / "model.safetensors")
    renamed = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    renamed["h.0.attn.bias"] = torch.ones(1, 1, CONTEXT, CONTEXT).tril()
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    ours, _ = from_hf(folder)
    assert _max_diff(ours, hf, _random_ids()) < TOL


# ---------------------------------------------------------------- scratchlm -> HF


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_llama_to_hf_loads_in_transformers_and_matches(tmp_path, tokenizer, tied):
    ours = _ours(tied)
    out = to_hf(ours, tokenizer, tmp_path / "export")
    assert out == tmp_path / "export"
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.num_key_value_heads == 2
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == tied
    assert _max_diff(ours, hf, _random_ids()) < TOL
    _check_generation(ours, hf, tokenizer)

    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = TEXT[:200] + EOT + "robot"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    eos = tokenizer.special_tokens[EOT]
    assert hf_tok.eos_token_id == eos
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == eos

    # And back: the weights survive the round trip bit for bit.
    again, tok = from_hf(out)
    assert again.config == ours.config
    for name, t in ours.state_dict().items():
        assert torch.equal(again.state_dict()[name], t), name
    assert tok.encode(text) == tokenizer.encode(text)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_gpt2_to_hf_loads_in_transformers_and_matches(tmp_path, tokenizer, tied):
    ours = _ours_gpt2(tied)
    out = to_hf(ours, tokenizer, tmp_path / "export")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert (hf.lm_head.weight is hf.transformer.wte.weight) == tied
    assert _max_diff(ours, hf, _random_ids()) < TOL
    _check_generation(ours, hf, tokenizer)
    again, _ = from_hf(out)
    for name, t in ours.state_dict().items():
        assert torch.equal(again.state_dict()[name], t), name


def test_tied_weights_are_written_once(tmp_path, tokenizer):
    out = to_hf(_ours(tied=True), tokenizer, tmp_path / "export")
    assert "lm_head.weight" not in load_file(out / "model.safetensors")
    out = to_hf(_ours_gpt2(tied=True), tokenizer, tmp_path / "gpt2")
    assert "lm_head.weight" not in load_file(out / "model.safetensors")


def test_every_exported_file_gets_the_mode_of_a_new_file(tmp_path, tokenizer):
    """Not safetensors' private 0600 for the weights while the JSON files get 0644."""
    old = os.umask(0o022)
    try:
        out = to_hf(_ours(tied=True), tokenizer, tmp_path / "export")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert "model.safetensors" in modes and modes == dict.fromkeys(modes, 0o644)


def test_generation_through_scratchlm_generate_matches_hf(tmp_path, tokenizer):
    generate = pytest.importorskip("scratchlm.generate")
    if not hasattr(generate, "generate_ids"):
        pytest.skip("scratchlm.generate has no generate_ids yet")
    from scratchlm.config import SampleConfig

    ours = _ours(tied=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        to_hf(ours, tokenizer, tmp_path / "export")
    ).eval()
    eos = tokenizer.special_tokens[EOT]
    prompts = [tokenizer.encode("Once upon a time the robot"), tokenizer.encode("Every night")]
    sample = SampleConfig(temperature=0.0, max_new_tokens=20)
    rows: list[list[int]] = [[] for _ in prompts]
    for step in generate.generate_ids(ours, prompts, sample, stop_ids=[eos]):
        for row, token in zip(rows, step, strict=True):
            if token is not None:
                row.append(token)
    for prompt, row in zip(prompts, rows, strict=True):
        expected = _hf_greedy(hf, prompt, 20, eos)
        assert row == [t for t in expected if t != eos], prompt


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (dict(position="cope"), "position='cope'"),
        (dict(position="none"), "position='none'"),
        (dict(norm="dyt"), "norm='dyt'"),
        (dict(qk_norm=True), "qk_norm"),
        (dict(shared_depth=2), "shared_depth"),
        (dict(bias=True), "bias"),
        (dict(norm="layernorm"), "norm='layernorm'"),
        (dict(ffn="gelu"), "ffn='gelu'"),
        (dict(ffn="relu2"), "ffn='relu2'"),
        (dict(logit_softcap=30.0), "logit_softcap=30.0"),
    ],
)
def test_llama_family_options_hf_cannot_represent_are_refused(tmp_path, overrides, named):
    model = TransformerLM(_ours(tied=False).config.replace(**overrides))
    with pytest.raises(ConfigError, match=named):
        to_hf(model, None, tmp_path / "export")
    assert not (tmp_path / "export").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (dict(n_kv_heads=2), "n_kv_heads"),
        (dict(bias=False), "bias"),
        (dict(norm="rmsnorm"), "norm='rmsnorm'"),
        (dict(ffn="swiglu"), "ffn='swiglu'"),
        (dict(norm="dyt"), "norm='dyt'"),
        (dict(qk_norm=True), "qk_norm"),
        (dict(ffn="relu2"), "ffn='relu2'"),
        (dict(logit_softcap=30.0), "logit_softcap=30.0"),
    ],
)
def test_gpt2_family_options_hf_cannot_represent_are_refused(tmp_path, overrides, named):
    model = TransformerLM(_ours_gpt2().config.replace(**overrides, d_ff=None))
    with pytest.raises(ConfigError, match=named):
        to_hf(model, None, tmp_path / "export")


def test_zero_init_proj_changes_only_initialisation_and_exports(tmp_path, tokenizer):
    # Trained (here: randomised) weights of a zero_init_proj model are a plain Llama's.
    ours = _ours(tied=False, zero_init_proj=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(to_hf(ours, None, tmp_path / "x"))
    assert _max_diff(ours, hf.eval(), _random_ids()) < TOL


def test_cli_refuses_a_soft_capped_model_in_one_line(tmp_path, tokenizer, capsys):
    model = TransformerLM(_ours(tied=False).config.replace(logit_softcap=15.0))
    ckpt = save_checkpoint(model, None, 0, tmp_path / "ckpt", tokenizer=tokenizer)
    assert main(["export", "hf", str(ckpt), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scratchlm: error: ") and err.count("\n") == 1
    assert "logit_softcap=15.0 (Llama does not cap its logits)" in err
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_unless_forced(tmp_path, tokenizer):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    model = _ours(tied=False)
    with pytest.raises(OutputExistsError, match="exists"):
        to_hf(model, tokenizer, out)
    assert (out / "keep.txt").read_text() == "mine"
    to_hf(model, tokenizer, out, force=True)
    assert not (out / "keep.txt").exists()
    assert (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_tokenizer_larger_than_model_vocab_is_refused(tmp_path, tokenizer):
    model = TransformerLM(_ours(tied=False).config.replace(vocab_size=VOCAB - 10))
    with pytest.raises(ScratchLMError, match="300 ids"):
        to_hf(model, tokenizer, tmp_path / "export")


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path, tokenizer):
    folder = tmp_path / "hf"
    _save_hf(_hf_llama(tokenizer, tied=False), tokenizer, folder)
    (folder / "model.safetensors").unlink()
    # Not a pickle at all: any attempt to unpickle it would fail differently.
    (folder / "pytorch_model.bin").write_bytes(b"this is not read")
    with pytest.raises(ScratchLMError, match=r"pytorch_model\.bin.*safetensors"):
        from_hf(folder)


def _edit_config(folder, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}), "llama3"),
        (dict(rope_parameters=None, rope_scaling={"type": "linear", "factor": 2.0}), "linear"),
        (dict(attention_bias=True), "attention_bias"),
        (dict(mlp_bias=True), "mlp_bias"),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(head_dim=32), "head_dim"),
        (dict(model_type="mistral", architectures=["MistralForCausalLM"]), "mistral"),
    ],
)
def test_unsupported_hf_configs_are_refused(tmp_path, tokenizer, changes, named):
    folder = tmp_path / "hf"
    _save_hf(_hf_llama(tokenizer, tied=False), tokenizer, folder)
    _edit_config(folder, **changes)
    with pytest.raises(ScratchLMError, match=named):
        from_hf(folder)


def test_unsupported_gpt2_activation_is_refused(tmp_path, tokenizer):
    folder = tmp_path / "hf"
    _save_hf(_hf_gpt2(tokenizer), tokenizer, folder)
    _edit_config(folder, activation_function="relu")
    with pytest.raises(ConfigError, match="activation_function='relu'"):
        from_hf(folder)


def test_missing_and_unexpected_tensors_are_refused(tmp_path, tokenizer):
    folder = tmp_path / "hf"
    _save_hf(_hf_llama(tokenizer, tied=False), tokenizer, folder)
    tensors = load_file(folder / "model.safetensors")
    extra = {**tensors, "model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}
    save_file(extra, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ScratchLMError, match=r"q_proj\.bias"):
        from_hf(folder)
    del tensors["model.norm.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ScratchLMError, match=r"model\.norm\.weight"):
        from_hf(folder)


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScratchLMError, match=r"config\.json"):
        from_hf(tmp_path / "empty")


def test_a_chat_model_stops_at_the_end_of_its_turn_in_transformers(tmp_path, tokenizer):
    """The export of an instruction-tuned model lists <|end|> as an eos id, so HF
    ``generate`` ends an answer where ``scratchlm chat`` does."""
    import transformers

    from scratchlm.chat_format import END_OF_TURN, chat_tokenizer, render_prompt
    from scratchlm.config import preset
    from scratchlm.model import TransformerLM

    tok = chat_tokenizer(tokenizer)
    torch.manual_seed(0)
    model = TransformerLM(preset("tiny", vocab_size=tok.vocab_size))
    end = tok.special_tokens[END_OF_TURN]
    ids = torch.tensor([render_prompt([{"role": "user", "content": "hello"}], tok)])
    with torch.no_grad():  # make <|end|> the certain next token: the answer is empty
        h = model.hidden_states(ids)[0, -1]  # (d_model,)
        model.lm_head.weight.zero_()
        model.lm_head.weight[end] = 10 * h  # its logit 10|h|^2 > 0, every other one 0
    to_hf(model, tok, tmp_path / "hf")
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [end, tok.special_tokens[EOT]]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    out = hf.generate(ids, max_new_tokens=5, do_sample=False)
    assert out[0, ids.shape[1] :].tolist() == [end]  # stopped right after <|end|>
