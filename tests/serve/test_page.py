"""The chat page (GET /) in a real headless Chromium against a real `scratchlm serve` process.

The browser is Debian's chromium driven by Playwright from PyPI (no `playwright install`
download); scripts/install_browser.sh installs it and scripts/test.sh calls that script.
The model is tiny and untrained; its final norm is zeroed, so all logits are 0 and greedy
decoding (temperature 0, set in the page) repeats one character until the budget or the
context runs out: an answer long enough to watch it stream and to stop it.
"""

from __future__ import annotations

import json
import os
import string
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from scratchlm.chat_format import chat_tokenizer
from scratchlm.checkpoint import save_checkpoint
from scratchlm.config import preset
from scratchlm.model import TransformerLM
from scratchlm.serve.metrics import parse_samples
from scratchlm.tokenizer import CharTokenizer

ROOT = Path(__file__).resolve().parents[2]
BROWSER = Path(os.environ.get("SCRATCHLM_BROWSER", "/usr/bin/chromium"))

# Characters a user may type in these tests, <script> included. No space or newline: the
# vocabulary is sorted, so "!" is id 0 and the endless answer is visible ("!!!...").
VOCAB = string.ascii_letters + string.digits + string.punctuation
CONTEXT = 4096  # room for a long answer; RoPE takes any length
XSS = "<script>window.__pwned=1</script>"


@pytest.fixture(scope="module")
def endless_checkpoint(tmp_path_factory) -> Path:
    """A chat model that greedily repeats one character forever: all logits 0 pick id 0."""
    tok = chat_tokenizer(CharTokenizer(VOCAB, ["<|endoftext|>"]))
    torch.manual_seed(0)
    model = TransformerLM(preset("tiny", vocab_size=tok.vocab_size, context_length=CONTEXT))
    model.norm.weight.data.zero_()
    folder = tmp_path_factory.mktemp("endless")
    return save_checkpoint(model.eval(), None, 0, folder / "ck", tokenizer=tok)


@pytest.fixture(scope="module")
def server(endless_checkpoint, start_server):
    handle = start_server(endless_checkpoint, "--max-batch", "2")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, driven by Playwright; skips the test without one."""
    if not BROWSER.exists():
        pytest.skip(
            f"no browser at {BROWSER}: scripts/install_browser.sh installs Debian's chromium "
            "(needs root and apt-get), or set SCRATCHLM_BROWSER to a Chromium binary"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(BROWSER), headless=True, args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()


def open_page(browser, url: str, width: int = 1000, height: int = 700):
    """A fresh browser context (empty localStorage) showing the page at `url`, once it has
    asked the server for the model (connected or not)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.goto(url)
    page.wait_for_function("document.getElementById('model').textContent !== 'connecting…'")
    return context, page


@pytest.fixture
def page(browser, server):
    context, page = open_page(browser, server.url)
    yield page
    context.close()


def get(url: str, path: str) -> str:
    with urllib.request.urlopen(url.rstrip("/") + path, timeout=10) as response:
        return response.read().decode()


def metrics(url: str) -> dict[str, float]:
    return parse_samples(get(url, "/metrics"))


def generated_tokens(url: str) -> float:
    return metrics(url)["scratchlm_generated_tokens_total"]


def cancelled(url: str) -> float:
    return metrics(url).get('scratchlm_generations_finished_total{reason="cancelled"}', 0.0)


def running(url: str) -> int:
    return json.loads(get(url, "/health"))["running"]


def wait_until(condition, what: str, timeout: float = 15.0):
    """Polls `condition` until it is true; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def answer_text(page) -> str:
    return page.locator(".message.assistant .content").last.text_content()


def settings(page, **values: str) -> None:
    for field, value in values.items():
        page.fill(f"#{field.replace('_', '-')}", value)


def test_an_answer_streams_in_and_stop_stops_the_server(page, server):
    budget = CONTEXT - 100
    settings(page, temperature="0", max_tokens=str(budget))
    tokens_before, cancelled_before = generated_tokens(server.url), cancelled(server.url)
    page.click("#input")
    page.keyboard.type("hi")
    page.keyboard.press("Shift+Enter")  # a new line, not sent
    page.keyboard.type("there")
    assert page.input_value("#input") == "hi\nthere"
    assert page.locator(".message").count() == 0
    page.fill("#input", "hello")  # the tiny vocabulary has no newline
    page.keyboard.press("Enter")

    # The answer grows over several looks while the Stop button shows.
    lengths = [0]
    while len(lengths) < 4:
        wait_until(lambda: len(answer_text(page)) > lengths[-1], "the answer to grow")
        lengths.append(len(answer_text(page)))
    assert page.is_visible("#stop") and not page.is_visible("#send")
    assert page.locator(".message.user .content").text_content() == "hello"

    page.click("#stop")
    page.wait_for_selector("#send:not([hidden])")
    assert page.locator(".message.assistant .note").text_content() == "[stopped]"
    # The server stops too: nothing running, the generation ended as cancelled, and the
    # token counter stands still, short of the answer's budget.
    wait_until(lambda: running(server.url) == 0, "/health to show 0 running")
    assert cancelled(server.url) == cancelled_before + 1
    tokens = generated_tokens(server.url)
    time.sleep(0.5)
    assert generated_tokens(server.url) == tokens < tokens_before + budget
    shown = answer_text(page)
    assert set(shown) == {"!"}  # id 0 repeated, as greedy gives

    # Reload: the conversation comes back from the browser's storage.
    page.reload()
    page.wait_for_selector(".message.assistant")
    assert page.locator(".message.user .content").text_content() == "hello"
    assert answer_text(page) == shown
    assert page.locator(".message.assistant .note").text_content() == "[stopped]"
    assert page.locator("#chats li").count() == 1
    assert page.locator("#chats li").text_content().startswith("hello")
    assert page.input_value("#temperature") == "0"  # settings are kept too

    # Leaving the page mid-answer (a reload here) stops the generation as well.
    page.fill("#input", "again")
    page.press("#input", "Enter")
    wait_until(lambda: len(answer_text(page)) > 0, "the second answer to start")
    page.reload()
    wait_until(lambda: running(server.url) == 0, "/health to show 0 running after a reload")
    assert cancelled(server.url) == cancelled_before + 2


def test_a_script_in_a_message_is_shown_as_text_not_run(page, server):
    settings(page, temperature="0", max_tokens="5")
    page.fill("#input", XSS)
    page.press("#input", "Enter")
    page.wait_for_selector(".message.assistant .content:not(:empty)")
    page.wait_for_selector("#send:not([hidden])")
    assert page.locator(".message.user .content").text_content() == XSS
    assert len(answer_text(page)) == 5  # the answer, max_tokens long, came back too
    assert page.locator("#messages script").count() == 0
    assert page.evaluate("window.__pwned") is None


def store_chat(page, *messages: tuple[str, str]) -> None:
    """Puts one conversation in the page's storage, as the page saves it, and reloads."""
    chat = {
        "id": "c1",
        "title": "stored",
        "updated": 1,
        "messages": [{"role": role, "content": content} for role, content in messages],
    }
    page.evaluate(
        "chats => localStorage.setItem('scratchlm.chats', JSON.stringify(chats))",
        {"current": "c1", "chats": [chat]},
    )
    page.reload()
    page.wait_for_selector(".message")


def test_code_blocks_show_as_code_and_html_in_answers_as_text(page):
    html = '<img src=x onerror="window.__pwned=2">'
    answer = f"Try this:\n```python\nprint('<b>hi</b>')\nx = 1\n```\nThen {html} `inline`."
    store_chat(page, ("user", "code please"), ("assistant", answer))
    code = page.locator(".message.assistant pre > code")
    assert code.count() == 1
    assert code.text_content() == "print('<b>hi</b>')\nx = 1"
    assert code.get_attribute("class") == "language-python"
    texts = page.locator(".message.assistant .content > .text").all_text_contents()
    assert texts == ["Try this:", 'Then <img src=x onerror="window.__pwned=2"> inline.']
    assert page.locator(".message.assistant .text code").text_content() == "inline"
    assert page.locator("#messages img").count() == 0
    assert page.evaluate("window.__pwned") is None


def test_chats_export_to_a_file_and_import_in_another_browser(page, browser, server, tmp_path):
    store_chat(page, ("user", "question"), ("assistant", "answer"))
    with page.expect_download() as download:
        page.click("#export")
    exported = tmp_path / "chats.json"
    download.value.save_as(exported)
    assert json.loads(exported.read_text())["chats"][0]["messages"][1]["content"] == "answer"

    context, other = open_page(browser, server.url)  # another browser: empty storage
    try:
        assert other.locator(".message").count() == 0
        other.set_input_files("#import-file", str(exported))
        other.wait_for_selector(".message.assistant")
        assert other.locator(".message .content").all_text_contents() == ["question", "answer"]
        assert other.locator("#chats li").count() == 1  # the empty new chat made way
        bad = tmp_path / "bad.json"
        bad.write_text("{not json")
        other.set_input_files("#import-file", str(bad))
        other.wait_for_selector("#error:has-text('not a chats file')")
        assert other.locator(".message").count() == 2  # nothing lost
    finally:
        context.close()


def test_a_bad_setting_shows_the_servers_message(page):
    settings(page, temperature="-1")
    page.fill("#input", "hello")
    page.press("#input", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    error = page.text_content("#error")
    assert "400" in error and "temperature" in error
    # The turn is taken back and its text returned to the box, ready to send again.
    assert page.locator(".message").count() == 0
    assert page.input_value("#input") == "hello"


def test_a_phone_screen_has_no_sideways_scroll(browser, server):
    context, page = open_page(browser, server.url, width=390, height=844)
    try:
        long_word = "x" * 300
        code = "```\n" + "y = " + "1 + " * 100 + "1\n```"
        store_chat(page, ("user", long_word), ("assistant", f"{long_word}\n{code}"))
        widths = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1] == 390
        box = page.locator("#input").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844
        assert not page.is_visible("#settings")  # in the drawer, opened from the header
        page.click("#menu")
        assert page.is_visible("#temperature")
    finally:
        context.close()


def test_errors_are_shown_key_missing_queue_full_server_down(
    browser, endless_checkpoint, start_server
):
    own = start_server(
        endless_checkpoint, "--api-key", "sesame", "--max-batch", "1", "--max-queue", "1"
    )
    context, page = open_page(browser, own.url)
    try:
        # No key: the page says one is needed.
        page.wait_for_selector("#error:not([hidden])")
        assert "API key" in page.text_content("#error") and "401" in page.text_content("#error")
        settings(page, api_key="sesame", temperature="0", max_tokens="3")
        page.wait_for_selector("#error", state="hidden")  # the new key was tried and accepted
        assert page.text_content("#model") != "not connected"
        page.fill("#input", "hello")
        page.press("#input", "Enter")
        page.wait_for_selector(".message.assistant .note, #send:not([hidden])")
        wait_until(lambda: len(answer_text(page)) == 3, "the answer with the key")
        assert page.is_hidden("#error")

        # Queue full: one request decoding, one waiting, the page's is refused.
        busy = [stream_forever(own.url, "sesame") for _ in range(2)]
        wait_until(lambda: running(own.url) == 1, "the server to be busy")
        page.fill("#input", "again")
        page.press("#input", "Enter")
        page.wait_for_selector("#error:not([hidden])")
        assert "busy" in page.text_content("#error")
        for response in busy:
            response.close()

        # Server down.
        own.stop()
        page.fill("#input", "anyone")
        page.press("#input", "Enter")
        page.wait_for_selector("#error:has-text('Cannot reach the server')")
        assert page.input_value("#input") == "anyone"
        assert page.locator(".message.user").count() == 1  # only the first, answered turn
    finally:
        context.close()
        own.stop()


def stream_forever(url: str, key: str):
    """Starts an endless streamed completion with urllib; returns the open response."""
    body = {
        "model": json.loads(get_with_key(url, "/v1/models", key))["data"][0]["id"],
        "messages": [{"role": "user", "content": "go"}],
        "stream": True,
        "temperature": 0,
        "max_tokens": CONTEXT - 100,
    }
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    return urllib.request.urlopen(request, timeout=10)


def get_with_key(url: str, path: str, key: str) -> str:
    request = urllib.request.Request(
        url.rstrip("/") + path, headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


# scripts/install_browser.sh, run with stand-in commands on PATH: `id` says who runs it,
# apt-get records its arguments.


def install_browser(tmp_path: Path, *, uid: int | None, apt: bool, browser: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    log = bin_dir / "apt.log"
    if uid is not None:
        (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    if apt:
        (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    result = subprocess.run(
        ["/bin/bash", str(ROOT / "scripts" / "install_browser.sh")],
        env={"PATH": str(bin_dir), "SCRATCHLM_BROWSER": str(browser)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, log.read_text().splitlines() if log.exists() else []


def test_install_browser_installs_debians_chromium_as_root(tmp_path):
    result, apt = install_browser(tmp_path, uid=0, apt=True, browser=tmp_path / "none")
    assert result.returncode == 0
    assert apt == ["update", "install -y chromium"]


def test_install_browser_says_why_it_cannot_and_still_succeeds(tmp_path):
    result, apt = install_browser(tmp_path, uid=1000, apt=True, browser=tmp_path / "none")
    assert result.returncode == 0 and apt == []
    assert "needs root" in result.stderr
    result, apt = install_browser(tmp_path / "b", uid=0, apt=False, browser=tmp_path / "none")
    assert result.returncode == 0 and "no apt-get" in result.stderr


def test_install_browser_does_nothing_when_the_browser_is_there(tmp_path):
    present = tmp_path / "chromium"
    present.write_text("")
    present.chmod(0o755)
    result, apt = install_browser(tmp_path, uid=0, apt=True, browser=present)
    assert result.returncode == 0 and apt == [] and result.stderr == ""
