"""Screenshots of the chat page for the README: a real `aipc serve` with the embedded model, driven by Chromium.

    python scripts/screenshots.py [--out docs] [--chromium /usr/bin/chromium]

Writes chat-page-desktop.png (1280x800) and chat-page-phone.png (390x844, the same conversation) to --out.
Every answer is the model's own, asked through the page at temperature 0, so the pictures change a little
with the model and the runtime's version.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

QUESTIONS = [
    "List three benefits of regular exercise.",
    "Write a Python function that checks if a number is prime. Use a code block.",
]
EARLIER = "What is the capital of France?"  # a second conversation, so the list shows more than one


def start_server() -> tuple[subprocess.Popen, str]:
    """`aipc serve --port 0`, and its URL once it prints the ready line (the model is loaded then)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "aipc", "serve", "--port", "0"], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    line = proc.stdout.readline()
    if not line.startswith("aipc: serving "):
        proc.kill()
        raise SystemExit(f"aipc serve did not start: {line!r}")
    return proc, line.split(" at ", 1)[1].split("/ ", 1)[0].rstrip("/")


def ask(page, question: str) -> None:
    done = page.locator(".msg.assistant[data-done='true']")
    before = done.count()
    page.fill("#prompt", question)
    page.keyboard.press("Enter")
    done.nth(before).wait_for(timeout=300_000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNG files (default: docs)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium to drive")
    args = parser.parse_args()
    proc, url = start_server()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--headless", "--no-sandbox"])
            desktop = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
            page = desktop.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#model option", state="attached")
            page.click("#open-settings")
            page.fill("#temperature", "0")
            page.click("#close-settings")
            ask(page, EARLIER)
            page.click("#new-chat")
            for question in QUESTIONS:
                ask(page, question)
            page.locator("#prompt").blur()
            page.mouse.move(1270, 400)  # no hover highlight on the last button clicked
            # Show the list and the code block together: the first answer's list at the top of the view.
            page.locator(".msg.assistant ol").first.evaluate("e => e.scrollIntoView({block: 'start'})")
            args.out.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out / "chat-page-desktop.png")

            phone = browser.new_context(
                viewport={"width": 390, "height": 844},
                device_scale_factor=2,
                is_mobile=True,
                has_touch=True,
                color_scheme="light",
                storage_state=desktop.storage_state(),  # the same conversations, kept in localStorage
            )
            page = phone.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#model option", state="attached")
            page.locator("#prompt").blur()
            page.screenshot(path=args.out / "chat-page-phone.png")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"wrote {args.out / 'chat-page-desktop.png'} and {args.out / 'chat-page-phone.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
