"""Streamed text never splits a UTF-8 character, through the real server.

The model is rigged to emit known bytes one token at a time: its final norm is zeroed,
so every logit is 0, and with ``presence_penalty`` every token already seen drops below
the rest, so greedy decoding emits the unseen ids in order 0, 1, 2, ... The byte-level
tokenizer puts the bytes of "é" (C3 A9) and of "😀" (F0 9F 98 80) at ids 0-5: the
answer is those six bytes, each token half or a quarter of a character.
"""

from __future__ import annotations

import openai
import pytest
import torch

from scratchlm.checkpoint import save_checkpoint
from scratchlm.config import preset
from scratchlm.model import TransformerLM
from scratchlm.tokenizer import BPETokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

EOT = "<|endoftext|>"
FIRST = "é😀".encode()  # 6 bytes, emitted one per token


@pytest.fixture(scope="module")
def byte_checkpoint(tmp_path_factory):
    order = list(FIRST) + [b for b in range(256) if b not in FIRST]
    tok = BPETokenizer({i: bytes([b]) for i, b in enumerate(order)}, [], [EOT])
    torch.manual_seed(0)
    model = TransformerLM(preset("tiny", vocab_size=tok.vocab_size, context_length=64))
    model.norm.weight.data.zero_()  # every logit 0: greedy takes the lowest id not penalised
    return save_checkpoint(model, None, 0, tmp_path_factory.mktemp("bytes") / "ck", tokenizer=tok)


def test_streamed_deltas_are_whole_characters(start_server, byte_checkpoint):
    server = start_server(byte_checkpoint)
    client = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=60)
    settings = dict(model="ck", prompt="ab", max_tokens=len(FIRST), temperature=0)
    whole = client.completions.create(**settings, presence_penalty=2.0)
    assert whole.choices[0].text == "é😀"
    assert whole.usage.completion_tokens == len(FIRST)

    stream = client.completions.create(**settings, presence_penalty=2.0, stream=True)
    deltas = [c.choices[0].text for c in stream if c.choices and c.choices[0].text]
    assert deltas == ["é", "😀"]  # six tokens, two deltas: no half character ever sent

    repeated = client.completions.create(**settings, presence_penalty=0.0)
    assert "\ufffd" in repeated.choices[0].text  # without the penalty: id 0 (C3) repeated
    assert server.stop() == 0
