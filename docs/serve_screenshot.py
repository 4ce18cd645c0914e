"""The README's picture of the chat page: serve a run, ask its models one question in headless Chromium, save a PNG.

    python docs/serve_screenshot.py --run runs/default                      docs/serve.png, every model
    python docs/serve_screenshot.py --run runs/default --models sft,dpo,grpo --question "What is 3 plus 4?"

It drives Debian's Chromium (apt-get install chromium) through the playwright package
(requirements.txt), with a fresh profile and no network; no browser is downloaded.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from gpt_scratch.chat import read_question
from gpt_scratch.serve_load import start_server

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def screenshot(url: str, question: str, models: list[str] | None, out: Path, width: int, height: int) -> None:
    """Open the page at url, tick `models` (None: all), ask the question, wait for every answer, save the PNG."""
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=shutil.which("chromium"), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height})
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#models[data-ready=yes]", timeout=60_000)
            if models is not None:
                for box in page.locator("#models input[type=checkbox]").all():
                    box.set_checked(box.get_attribute("data-model") in models)
            page.fill("#question", question)
            page.press("#question", "Enter")
            page.wait_for_function("!document.querySelector('.assistant[data-state=streaming]')", timeout=120_000)
            page.screenshot(path=str(out))
        finally:
            browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/default"), help="run folder (default runs/default)")
    parser.add_argument("--question", default="Reverse the letters.\\n\\nc a t",
                        help="the question; a typed \\n is a line break (default: a world task)")
    parser.add_argument("--models", help="comma-separated models to ask (default: all of the run's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "serve.png", help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=560)
    args = parser.parse_args()
    if shutil.which("chromium") is None:
        parser.error("no chromium here; install it (Debian: apt-get install chromium)")
    server, url = start_server(args.run)
    try:
        screenshot(url, read_question(args.question), args.models.split(",") if args.models else None, args.out,
                   args.width, args.height)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
