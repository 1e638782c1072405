"""Takes docs/chat_page.png: the chat page of `mpt-lite serve` mid-conversation, in headless
chromium (scripts/install_chromium.sh installs it and selenium).

    PYTHONPATH=. .venv/bin/python scripts/screenshot_chat_page.py [--model PATH] [--out docs/chat_page.png]

Serves the model (default: the embedded one, 4-bit) on a free loopback port, has two turns of a
conversation in the page, and saves the window once the second reply has ended."""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import mpt_lite
from mpt_lite.server import create_app, server_thread

TURNS = ("Write a Python function that reverses a string.", "Now write a class for a stack.")


def wait(driver, script: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not driver.execute_script(script):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page did not get there: {script}")
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="folder, hub id or alias (default: the embedded model)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "chat_page.png"))
    ap.add_argument("--max-tokens", default="60")
    args = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1250",
                "--hide-scrollbars"):
        opts.add_argument(arg)
    app = create_app(mpt_lite.load(args.model), model_name=args.model or "mpt-lite", num_blocks=256, max_num_seqs=2)
    with server_thread(app) as url:
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
        try:
            driver.get(url + "/")
            wait(driver, "return document.getElementById('model-name').textContent !== ''")
            limit = driver.find_element("id", "max-tokens")
            limit.clear()
            limit.send_keys(args.max_tokens)
            for turn, text in enumerate(TURNS, 1):
                driver.find_element("id", "input").send_keys(text)
                driver.find_element("id", "send").click()
                wait(driver, f"const m = document.querySelectorAll('.msg.assistant');"
                             f"return m.length === {turn} && m[{turn - 1}].dataset.state !== 'streaming'")
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
