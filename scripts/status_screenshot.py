"""Take docs/status-page.png from the demo: serve it, let the page poll for a while, shoot.

    .venv/bin/python scripts/status_screenshot.py [--seconds 150] [--history 0] [--out docs/status-page.png]

Uses Debian's chromium through Playwright (the test extra), never a downloaded browser.
The demo's flakycloud degrades about 85 s into its 240 s cycle and fails at about 130 s,
so the default 150 s shows it out of rotation with two and a half minutes of trends.
``--history 360 --seconds 30`` opens the page on a demo that has run for six minutes: its
charts open with that history, and the page's own polls follow it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=150.0, help="how long the page polls before the shot")
    parser.add_argument("--history", type=float, default=0.0, help="how long the demo runs before the page opens")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--width", type=int, default=1360)
    parser.add_argument("--scheme", choices=("dark", "light"), default="dark")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "status-page.png")
    args = parser.parse_args()
    script = Path(sys.executable).with_name("gateway-metrics")
    server = subprocess.Popen([str(script), "--demo", "--port", str(args.port), "--log-level", "warning"],
                              env={"GATEWAY_METRICS_ACCESS_LOG": "false", "PATH": "/usr/bin:/bin"})
    url = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        time.sleep(args.history)  # the service's own history, which the page opens with
        started = time.monotonic()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": 900}, color_scheme=args.scheme)
            page.goto(f"{url}/prometheus/metrics/status?refresh=2")
            page.wait_for_timeout(max(0.0, args.seconds - (time.monotonic() - started)) * 1000)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
