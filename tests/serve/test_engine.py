"""The serving engine (``scratchlm.serve.engine``) driven directly, without HTTP.

The references are the project's existing generation paths (``generate_ids``,
``chat.reply``) and full uncached forward passes, so continuous batching, chunked
prefill, slot compaction and per-request sampling are each checked against code that
shares none of them. The models are tiny and random (init_std 0.3, so the next token
depends on the whole context); the character vocabulary makes every character a token,
so a stop string of several characters always spans several tokens.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time

import pytest
import torch

import scratchlm.serve.request_state as request_state
from scratchlm.chat import chat_prompt_ids, reply, reply_stop_ids
from scratchlm.chat_format import chat_tokenizer
from scratchlm.config import SampleConfig, preset
from scratchlm.errors import ScratchLMError
from scratchlm.generate import generate_ids
from scratchlm.model import TransformerLM, prepare_for_inference
from scratchlm.serve.engine import (
    Engine,
    EngineBusyError,
    EngineClosedError,
    FinishEvent,
    GenerationRequest,
    RequestStream,
    TokenEvent,
)
from scratchlm.serve.slots import SlotCache
from scratchlm.tokenizer import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

CONTEXT = 64
LETTERS = "abcdefghijklmnopqrstuvwxyz!?. "


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer(CharTokenizer(LETTERS, ["<|endoftext|>"]))


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    config = preset("tiny", vocab_size=tok.vocab_size, context_length=CONTEXT, init_std=0.3)
    return TransformerLM(config).eval()


def greedy(n: int = 20, **kwargs) -> SampleConfig:
    return SampleConfig(temperature=0.0, max_new_tokens=n, **kwargs)


def request(tok, text: str, settings: SampleConfig, **kwargs) -> GenerationRequest:
    return GenerationRequest(tuple(tok.encode(text)), settings, **kwargs)


def collect(stream: RequestStream) -> tuple[list[int], str, FinishEvent]:
    """(answer ids, whole text, the finish event) of a stream read to its end."""
    events = list(stream)
    *tokens, finish = events
    assert isinstance(finish, FinishEvent) and all(isinstance(e, TokenEvent) for e in tokens)
    return [e.token_id for e in tokens], "".join(e.text for e in events), finish


def reference(model, prompt: list[int], settings: SampleConfig, stop_ids=()) -> list[int]:
    """The ids the existing engine gives this prompt alone (a stop id left out)."""
    generator = torch.Generator().manual_seed(settings.seed) if settings.seed is not None else None
    steps = generate_ids(model, [prompt], settings, stop_ids=stop_ids, generator=generator)
    return [step[0] for step in steps if step[0] is not None]


PROMPTS = [
    "hello there",
    "a",
    "the quick brown fox jumps over",
    "why?",
    "zebra crossing at noon",
    "ok. so",
]


# --- the same tokens alone and in a busy batch ------------------------------------------


def test_greedy_tokens_alone_equal_a_busy_batch_and_the_existing_engine(model, tok) -> None:
    """Six requests, three slots: requests leave at different budgets and waiting ones
    join the running batch mid-way; prompts are prefilled in chunks of 5 tokens. Each
    request's tokens equal what the existing engine gives its prompt alone."""
    budgets = [30, 4, 25, 9, 30, 14]
    settings = [greedy(n) for n in budgets]
    settings[3] = greedy(budgets[3], repetition_penalty=1.5)  # a row with a history
    expected = [reference(model, tok.encode(p), s) for p, s in zip(PROMPTS, settings, strict=True)]
    assert len({tuple(e[:4]) for e in expected}) == len(PROMPTS)  # the prompts matter
    with Engine(model, tok, max_batch=3, prefill_chunk=5) as engine:
        pairs = zip(PROMPTS, settings, strict=True)
        streams = [engine.submit(request(tok, p, s)) for p, s in pairs]
        results = [collect(s) for s in streams]
        # One more, after the others, in an engine that has served many: still the same.
        late = collect(engine.submit(request(tok, PROMPTS[0], settings[0])))
        stats = engine.stats()
    for (ids, text, finish), want, n in zip(results, expected, budgets, strict=True):
        assert ids == want and len(ids) == n
        assert text == tok.decode(want)
        assert finish.reason == "length" and finish.completion_tokens == n
    assert late[0] == expected[0]
    assert stats.running == 0 and stats.waiting == 0 and stats.max_batch == 3
    assert stats.requests_finished_total == {"length": 7}
    assert stats.generated_tokens_total == sum(budgets) + budgets[0]
    assert stats.prompt_tokens_total == sum(len(tok.encode(p)) for p in [*PROMPTS, PROMPTS[0]])


def test_chat_answer_equals_chat_reply_at_temperature_zero(model, tok) -> None:
    messages = [{"role": "user", "content": "what is a fox?"}]
    want = reply(model, tok, messages, temperature=0, max_new_tokens=30)
    ids = chat_prompt_ids(model, tok, messages, 30)
    req = GenerationRequest(tuple(ids), greedy(30), stop_ids=tuple(reply_stop_ids(tok)))
    with Engine(model, tok, max_batch=4) as engine:
        others = [engine.submit(request(tok, p, greedy(30))) for p in PROMPTS[:3]]
        _, text, _ = collect(engine.submit(req))
        for other in others:
            collect(other)
    assert text == want and want


def test_seeded_sampling_is_the_same_alone_and_in_a_batch(model, tok) -> None:
    def sampled(seed):
        return SampleConfig(temperature=1.0, top_k=20, max_new_tokens=25, seed=seed)

    prompt = PROMPTS[2]
    alone = reference(model, tok.encode(prompt), sampled(7))
    with Engine(model, tok, max_batch=4, prefill_chunk=3) as engine:
        noise = [engine.submit(request(tok, p, sampled(None))) for p in PROMPTS[:3]]
        mine = engine.submit(request(tok, prompt, sampled(7)))
        other = engine.submit(request(tok, prompt, sampled(8)))
        got, _, _ = collect(mine)
        differs, _, _ = collect(other)
        for stream in noise:
            collect(stream)
        again, _, _ = collect(engine.submit(request(tok, prompt, sampled(7))))
    assert got == alone == again
    assert differs != got


def test_a_soft_capped_model_samples_what_generate_ids_samples(model, tok) -> None:
    """logit_softcap lives in the model's forward pass, which the engine calls: seeded
    samples and log-probabilities follow the capped logits, as generate_ids' do."""
    capped = TransformerLM(model.config.replace(logit_softcap=1.5)).eval()
    capped.load_state_dict(model.state_dict())
    settings = SampleConfig(temperature=1.0, max_new_tokens=25, seed=3)
    prompt = tok.encode(PROMPTS[2])
    alone = reference(capped, prompt, settings)
    assert alone != reference(model, prompt, settings)  # the cap changes what is sampled
    req = GenerationRequest(tuple(prompt), settings, logprobs=1)
    with Engine(capped, tok, max_batch=2, prefill_chunk=4) as engine:
        noise = engine.submit(request(tok, PROMPTS[0], greedy(10)))
        *events, _ = list(engine.submit(req))
        collect(noise)
    assert [e.token_id for e in events] == alone
    with torch.no_grad():
        logits = capped(torch.tensor([prompt + alone[:-1]]))[0, len(prompt) - 1 :]  # (25, V)
    assert logits.abs().max() < 1.5
    logp = torch.log_softmax(logits, dim=-1)
    got = [e.logprob.logprob for e in events]
    assert got == pytest.approx(
        logp.gather(1, torch.tensor(alone)[:, None])[:, 0].tolist(), abs=1e-4
    )


# --- how requests end -------------------------------------------------------------------


def test_a_stop_id_ends_the_request_and_is_not_part_of_the_answer(model, tok) -> None:
    prompt = tok.encode(PROMPTS[0])
    full = reference(model, prompt, greedy(30))
    k = next(i for i, t in enumerate(full) if i >= 3 and t not in full[:i])
    with Engine(model, tok) as engine:
        ids, text, finish = collect(
            engine.submit(GenerationRequest(tuple(prompt), greedy(30), stop_ids=(full[k],)))
        )
    assert ids == full[:k] and text == tok.decode(full[:k])
    assert finish.reason == "stop" and finish.completion_tokens == k + 1


def test_a_stop_string_across_tokens_is_cut_and_never_leaked(model, tok) -> None:
    prompt = tok.encode(PROMPTS[4])
    full = reference(model, prompt, greedy(40))
    special = set(tok.special_tokens.values())

    def usable(i):  # three plain characters (three tokens), first seen ending at i + 2
        stop = tok.decode(full[i : i + 3])
        return not special & set(full[i : i + 3]) and stop not in tok.decode(full[: i + 2])

    start = next(i for i in range(4, 30) if usable(i))
    stop = tok.decode(full[start : start + 3])
    with Engine(model, tok) as engine:
        stream = engine.submit(GenerationRequest(tuple(prompt), greedy(40, stop=[stop])))
        events = list(stream)
    pieces = [e.text for e in events]
    assert "".join(pieces) == tok.decode(full[:start])
    assert pieces[start:] == ["", "", "", ""]  # nothing of it was released
    finish = events[-1]
    assert finish.reason == "stop" and finish.completion_tokens == start + 3


def test_budget_zero_and_a_full_context_end_with_length(model, tok) -> None:
    base = tok.encode(LETTERS * 3)
    near_full = base[: CONTEXT - 3]
    with Engine(model, tok, prefill_chunk=16) as engine:
        zero = collect(engine.submit(request(tok, "hi", greedy(0))))
        near = collect(engine.submit(GenerationRequest(tuple(near_full), greedy(100))))
        full = collect(engine.submit(GenerationRequest(tuple(base[:CONTEXT]), greedy(100))))
    assert zero[0] == [] and zero[2].reason == "length" and zero[2].completion_tokens == 0
    # A prompt of context - 3 tokens: 3 fed back, and a 4th sampled from the last slot.
    assert near[0] == reference(model, near_full, greedy(4))
    assert near[2].reason == "length" and near[2].completion_tokens == 4
    assert len(full[0]) == 1 and full[2].reason == "length"


class GatedTokenizer:
    """The tokenizer, but turning its ``at``-th token into text waits until the test
    opens the gate: the worker is then held at a known point of a request."""

    def __init__(self, tok, at: int) -> None:
        self.tok, self.at, self.count = tok, at, 0
        self.reached, self.gate = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def id_to_token(self, token_id: int) -> bytes:
        self.count += 1
        if self.count == self.at:
            self.reached.set()
            assert self.gate.wait(60), "the test never opened the gate"
        return self.tok.id_to_token(token_id)


def test_cancel_mid_stream_frees_the_slot_for_the_next_request(model, tok) -> None:
    gated = GatedTokenizer(tok, at=3)
    with Engine(model, gated, max_batch=1) as engine:
        stream = engine.submit(request(tok, PROMPTS[0], greedy(50)))
        waiting = engine.submit(request(tok, PROMPTS[1], greedy(5)))
        assert gated.reached.wait(60)
        assert engine.stats().running == 1 and engine.stats().waiting == 1
        stream.cancel()
        gated.gate.set()
        ids, _, finish = collect(stream)
        assert finish.reason == "cancelled" and finish.completion_tokens == 3 == len(ids)
        assert collect(waiting)[2].reason == "length"  # it got the freed slot
        stats = engine.stats()
    assert stats.running == 0 and stats.requests_finished_total == {"cancelled": 1, "length": 1}
    assert stats.generated_tokens_total == 3 + 5


def test_cancel_before_admission_and_during_a_chunked_prefill(model, tok) -> None:
    """A waiting request cancelled before it starts never runs; a long prompt cancelled
    half-way through its chunked prefill ends at once, and the next long prompt
    (reusing the prefill cache) still gets its own tokens."""
    gated = GatedTokenizer(tok, at=2)  # the short request's second token
    long_prompt = tuple(tok.encode((LETTERS * 2)[:50]))
    engine = Engine(model, gated, max_batch=3, prefill_chunk=4)
    never = engine.submit(request(tok, PROMPTS[0], greedy(5)))
    never.cancel()
    short = engine.submit(request(tok, "hi", greedy(20)))
    long = engine.submit(GenerationRequest(long_prompt, greedy(5)))
    with engine:
        assert gated.reached.wait(60)  # the long prompt is part-way through its prefill
        long.cancel()
        gated.gate.set()
        never_ids, _, never_finish = collect(never)
        assert never_ids == [] and never_finish.reason == "cancelled"
        ids, _, finish = collect(long)
        assert ids == [] and finish.reason == "cancelled"
        other = GenerationRequest(long_prompt[::-1], greedy(5))
        again = collect(engine.submit(other))
        assert collect(short)[0] == reference(model, tok.encode("hi"), greedy(20))
        stats = engine.stats()
    assert again[0] == reference(model, list(other.prompt_ids), greedy(5))
    assert stats.requests_finished_total == {"cancelled": 2, "length": 2}
    assert stats.prompt_tokens_total < 2 + 50 + 50  # the cancelled prefill stopped early


def test_a_closed_event_loop_counts_as_cancelled(model, tok) -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    with Engine(model, tok, max_batch=1) as engine:
        engine.submit(request(tok, PROMPTS[0], greedy(50)), loop=loop)
        after = collect(engine.submit(request(tok, PROMPTS[1], greedy(4))))
        stats = engine.stats()
    assert after[2].reason == "length"
    assert stats.requests_finished_total == {"cancelled": 1, "length": 1}
    assert stats.generated_tokens_total < 50 + 4


def test_the_batched_greedy_fast_path_agrees_with_sample_next(model, tok, monkeypatch) -> None:
    def run():
        with Engine(model, tok, max_batch=4) as engine:
            streams = [engine.submit(request(tok, p, greedy(20))) for p in PROMPTS]
            return [collect(s)[0] for s in streams]

    fast = run()
    init = request_state.RequestState.__init__

    def no_fast_path(self, *args):
        init(self, *args)
        self.greedy = False

    monkeypatch.setattr(request_state.RequestState, "__init__", no_fast_path)
    assert run() == fast


def test_leaving_the_iteration_early_cancels(model, tok) -> None:
    with Engine(model, tok, max_batch=1) as engine:
        stream = engine.submit(request(tok, PROMPTS[0], greedy(60)))
        for _ in stream:
            break
        after = collect(engine.submit(request(tok, PROMPTS[1], greedy(3))))
        assert after[2].reason == "length"
        finished = engine.stats().requests_finished_total
    # The abandoned stream ended "cancelled" unless it had run out its budget already.
    assert finished.get("cancelled", 0) + finished.get("length", 0) == 2


def test_close_ends_every_pending_stream(model, tok) -> None:
    gated = GatedTokenizer(tok, at=2)
    engine = Engine(model, gated, max_batch=1)
    engine.start()
    running = engine.submit(request(tok, PROMPTS[0], greedy(50)))
    queued = engine.submit(request(tok, PROMPTS[1], greedy(50)))
    assert gated.reached.wait(60)
    closer = threading.Thread(target=engine.close)
    closer.start()
    for _ in range(6000):  # until close() has marked the engine closed
        try:
            engine.submit(request(tok, "x", greedy(1)))
        except EngineClosedError:
            break
        except EngineBusyError:
            pass
        time.sleep(0.01)
    gated.gate.set()
    closer.join(60)
    assert not closer.is_alive()
    ids, _, finish = collect(running)
    assert finish.reason == "cancelled" and len(ids) == 2
    assert collect(queued)[2].reason == "cancelled"


# --- admission --------------------------------------------------------------------------


def test_a_full_queue_refuses_and_bad_requests_fail_at_submit(model, tok) -> None:
    engine = Engine(model, tok, max_batch=1, max_queue=2)  # not started: requests wait
    first = engine.submit(request(tok, "a", greedy(3)))
    engine.submit(request(tok, "b", greedy(3)))
    with pytest.raises(EngineBusyError, match="busy"):
        engine.submit(request(tok, "c", greedy(3)))
    assert engine.stats().waiting == 2
    with pytest.raises(ScratchLMError, match="empty"):
        engine.submit(GenerationRequest((), greedy(3)))
    with pytest.raises(ScratchLMError, match="context"):
        engine.submit(GenerationRequest((1,) * (CONTEXT + 1), greedy(3)))
    with pytest.raises(ScratchLMError, match="vocabulary"):
        engine.submit(GenerationRequest((1, tok.vocab_size), greedy(3)))
    with pytest.raises(ScratchLMError, match="logprobs"):
        engine.submit(GenerationRequest((1,), greedy(3), logprobs=21))
    engine.close()
    assert collect(first)[2].reason == "cancelled"
    with pytest.raises(EngineClosedError):
        engine.submit(request(tok, "d", greedy(3)))


# --- logprobs ---------------------------------------------------------------------------


def test_logprobs_equal_a_full_forward_pass(model, tok) -> None:
    prompt = tok.encode(PROMPTS[2])
    req = GenerationRequest(tuple(prompt), greedy(12), logprobs=3, prompt_logprobs=True)
    with Engine(model, tok, prefill_chunk=7) as engine:
        events = list(engine.submit(req))
    *tokens, finish = events
    ids = prompt + [e.token_id for e in tokens]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)  # (L, V)

    def check(lp, position, token):
        assert lp.token_id == token
        assert lp.logprob == pytest.approx(logp[position, token].item(), abs=1e-4)
        values, top = logp[position].topk(3)
        assert [t for t, _ in lp.top] == top.tolist()
        assert [v for _, v in lp.top] == pytest.approx(values.tolist(), abs=1e-4)

    assert finish.prompt_logprobs[0] is None and len(finish.prompt_logprobs) == len(prompt)
    for j in range(1, len(prompt)):
        check(finish.prompt_logprobs[j], j - 1, prompt[j])
    for i, event in enumerate(tokens):
        check(event.logprob, len(prompt) - 1 + i, event.token_id)


# --- scheduling -------------------------------------------------------------------------


def test_a_long_prefill_interleaves_with_a_running_decode(model, tok, monkeypatch) -> None:
    """A short request and a 50-token prompt arrive together; with chunks of 8 tokens
    the long prompt takes several iterations, and the short one gets a token in each."""
    order = []
    deliver = RequestStream.deliver

    def recording(self, event):
        order.append((self.request.prompt_ids, event))
        deliver(self, event)

    monkeypatch.setattr(RequestStream, "deliver", recording)
    short = request(tok, "hi", greedy(30))
    long_prompt = tok.encode((LETTERS * 2)[:50])
    long = GenerationRequest(tuple(long_prompt), greedy(5))
    engine = Engine(model, tok, max_batch=2, prefill_chunk=8)
    a, b = engine.submit(short), engine.submit(long)
    with engine:
        short_ids, _, _ = collect(a)
        long_ids, _, _ = collect(b)
    first_long = next(i for i, (p, _) in enumerate(order) if p == long.prompt_ids)
    before = sum(p == short.prompt_ids for p, _ in order[:first_long])
    assert before >= 50 // 8 - 1  # a decode step of the short one per chunk of the long
    assert long_ids == reference(model, long_prompt, greedy(5))
    assert short_ids == reference(model, tok.encode("hi"), greedy(30))


def test_async_iteration_on_a_loop(model, tok) -> None:
    want = reference(model, tok.encode(PROMPTS[0]), greedy(15))

    async def main(engine):
        loop = asyncio.get_running_loop()
        streams = [engine.submit(request(tok, PROMPTS[0], greedy(15)), loop=loop)] * 1
        streams.append(engine.submit(request(tok, PROMPTS[1], greedy(40)), loop=loop))
        ids = [e.token_id async for e in streams[0] if isinstance(e, TokenEvent)]
        async for _ in streams[1]:
            break  # leaving early cancels it
        return ids

    with Engine(model, tok) as engine:
        assert asyncio.run(main(engine)) == want
        with pytest.raises(ScratchLMError, match="async"):
            list(engine.submit(request(tok, "a", greedy(1)), loop=asyncio.new_event_loop()))
        collect(engine.submit(request(tok, "a", greedy(1))))  # the worker goes on
        assert engine.stats().running == 0


# --- failures ---------------------------------------------------------------------------


def test_a_failing_request_ends_with_error_while_another_completes(
    model, tok, monkeypatch, caplog
) -> None:
    sample_next = request_state.sample_next

    def broken(logits, config, generator, history=None):
        if config.seed == 13:
            raise RuntimeError("injected failure")
        return sample_next(logits, config, generator, history)

    monkeypatch.setattr(request_state, "sample_next", broken)
    bad = request(tok, PROMPTS[0], SampleConfig(temperature=1.0, seed=13, max_new_tokens=9))
    good = request(tok, PROMPTS[1], greedy(12))
    with Engine(model, tok) as engine:
        good_stream = engine.submit(good)
        bad_ids, _, bad_finish = collect(engine.submit(bad))
        good_ids, _, good_finish = collect(good_stream)
    assert bad_finish.reason == "error" and "injected failure" in bad_finish.error
    assert "\n" not in bad_finish.error and bad_ids == []
    assert good_finish.reason == "length"
    assert good_ids == reference(model, tok.encode(PROMPTS[1]), greedy(12))
    assert "injected failure" in caplog.text  # the traceback is logged


def test_a_failing_decode_step_ends_its_rows_and_the_engine_goes_on(
    model, tok, monkeypatch
) -> None:
    calls = {"n": 0}
    view = SlotCache.view

    def view_once_broken(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected step failure")
        return view(self)

    monkeypatch.setattr(SlotCache, "view", view_once_broken)
    with Engine(model, tok, max_batch=2) as engine:
        first = [engine.submit(request(tok, p, greedy(10))) for p in PROMPTS[:2]]
        reasons = [collect(s)[2].reason for s in first]
        after = collect(engine.submit(request(tok, PROMPTS[2], greedy(6))))
        stats = engine.stats()
    assert reasons == ["error", "error"]
    assert after[0] == reference(model, tok.encode(PROMPTS[2]), greedy(6))
    assert stats.running == 0


def test_a_prepared_int8_model_serves_the_tokens_generate_gives_it(model, tok) -> None:
    int8 = prepare_for_inference(copy.deepcopy(model), int8=True)
    prompt = tok.encode(PROMPTS[2])
    with Engine(int8, tok, max_batch=2) as engine:
        noise = engine.submit(request(tok, PROMPTS[0], greedy(20)))
        ids, _, _ = collect(engine.submit(GenerationRequest(tuple(prompt), greedy(20))))
        collect(noise)
    assert ids == reference(int8, prompt, greedy(20))
