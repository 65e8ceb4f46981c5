"""Takes docs/serve-page.png: the chat page of a real `scratchlm serve`, after real answers.

    python scripts/page_screenshot.py [CHECKPOINT_OR_RUN] [--out docs/serve-page.png]

Starts `scratchlm serve` on a free port (the newest run when no model is named), opens the
page in Debian's chromium (Playwright, as tests/serve/test_page.py does), asks the
questions one by one, waits for each answer, and saves a screenshot. The answers are the
model's own; nothing on the page is staged.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["Why do we have seasons?", "What is echolocation?"]


def start_server(model: str | None) -> tuple[subprocess.Popen, str]:
    """`scratchlm serve MODEL --port 0`, and the page URL it prints when ready."""
    argv = [sys.executable, "-m", "scratchlm", "serve", *([model] if model else []), "--port", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    for line in server.stdout:
        found = re.search(r"page at (http://\S+)", line)
        if found:
            return server, found.group(1)
    server.wait()
    raise SystemExit(f"scratchlm serve exited ({server.returncode}) before printing its URL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="checkpoint or run directory (default: newest)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "serve-page.png")
    parser.add_argument("--question", action="append", help="ask this (repeatable)")
    parser.add_argument("--system", default="", help="system prompt (default: none)")
    parser.add_argument(
        "--browser", default=os.environ.get("SCRATCHLM_BROWSER", "/usr/bin/chromium")
    )
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=650)
    args = parser.parse_args()

    server, url = start_server(args.model)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=args.browser, headless=True, args=["--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(url)
            page.wait_for_function("document.getElementById('model').textContent !== 'connecting…'")
            page.fill("#system", args.system)
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "120")
            for question in args.question or QUESTIONS:
                page.fill("#input", question)
                page.press("#input", "Enter")
                page.wait_for_selector("#send:not([hidden])", timeout=120_000)
            page.fill("#input", "And why is the sky blue?")  # typed, not sent: shows the box
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
