"""Takes docs/report-card.png: a run's report.md rendered to HTML, as a browser shows it.

    python scripts/report_screenshot.py RUN_DIR [--out docs/report-card.png]

RUN_DIR must already hold report.md (`scratchlm report RUN_DIR`). The Markdown is
rendered with python-markdown (pip install markdown) and a plain GitHub-like style,
opened in Debian's chromium (Playwright), and saved as a screenshot of the page's top.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import markdown
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
STYLE = """
body { font: 15px/1.5 -apple-system, "Segoe UI", "Noto Sans", Helvetica, Arial, sans-serif;
       color: #1f2328; max-width: 900px; margin: 24px auto; padding: 0 24px; }
h1, h2 { border-bottom: 1px solid #d1d9e0; padding-bottom: .3em; }
h1 { font-size: 2em; } h2 { font-size: 1.5em; margin-top: 1.5em; } h3 { font-size: 1.2em; }
table { border-collapse: collapse; margin: 0 0 16px; }
th, td { border: 1px solid #d1d9e0; padding: 5px 12px; }
tr:nth-child(2n) { background: #f6f8fa; }
code { background: #eff1f3; padding: .15em .35em; border-radius: 5px; font-size: 85%; }
img { max-width: 100%; }
sub { color: #59636e; }
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory holding report.md")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report-card.png")
    parser.add_argument("--html", type=Path, help="also keep the HTML page here")
    parser.add_argument(
        "--browser", default=os.environ.get("SCRATCHLM_BROWSER", "/usr/bin/chromium")
    )
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--height", type=int, default=1400)
    parser.add_argument("--full", action="store_true", help="the whole page, not its top")
    args = parser.parse_args()

    text = (args.run_dir / "report.md").read_text(encoding="utf-8")
    body = markdown.markdown(text, extensions=["tables"])
    page_file = args.html or args.run_dir / "report.html"
    page_file.write_text(
        f"<!doctype html><meta charset=utf-8><style>{STYLE}</style>{body}", encoding="utf-8"
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=args.browser, headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(page_file.resolve().as_uri())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=args.full)
        browser.close()
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
