"""``scratchlm serve`` as a command: the model it serves without an argument, the
model's id in the API, --int8."""

from __future__ import annotations

import copy

import openai
import pytest

from scratchlm.chat import reply
from scratchlm.checkpoint import CheckpointManager, load_model
from scratchlm.cli.serve import model_name
from scratchlm.model import prepare_for_inference

pytestmark = pytest.mark.usefixtures("one_thread")

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def chat_model(checkpoints):
    return load_model(checkpoints["chat"])


def test_model_names(tmp_path, checkpoints, chat_model):
    model, tok = chat_model
    for run in ("runs/default/sft", "runs/mine", "elsewhere/exp"):
        CheckpointManager(tmp_path / run).save(model, None, 3, tokenizer=tok)
    assert model_name(tmp_path / "runs" / "default" / "sft") == "default/sft"
    assert model_name(tmp_path / "runs" / "mine") == "mine"
    step = CheckpointManager(tmp_path / "runs" / "mine").latest_valid()
    assert model_name(step) == "mine"  # a checkpoint of a run: the run's name
    assert model_name(tmp_path / "elsewhere" / "exp") == "exp"
    assert model_name(checkpoints["chat"]) == "chat"  # a bare checkpoint directory


def test_without_a_checkpoint_it_serves_the_default_run_int8(start_server, chat_model, tmp_path):
    model, tok = chat_model
    CheckpointManager(tmp_path / "runs" / "default" / "sft").save(model, None, 1, tokenizer=tok)
    server = start_server(None, "--int8", cwd=tmp_path)
    try:
        client = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["default/sft"]
        answer = client.chat.completions.create(
            model="default/sft", messages=HI, temperature=0, max_tokens=20
        )
        quantized = prepare_for_inference(copy.deepcopy(model), int8=True)
        expected = reply(quantized, tok, HI, temperature=0, max_new_tokens=20)
        assert answer.choices[0].message.content == expected
    finally:
        assert server.stop() == 0
