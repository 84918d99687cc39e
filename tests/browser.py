"""Headless Chromium for the tests that render pages (cards, the dashboard)."""

from __future__ import annotations

from pathlib import Path


def _browser_args(chromium: str, profile: Path) -> list[str]:
    return [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--run-all-compositor-stages-before-draw",
    ]  # fmt: skip


def rendered_page(
    chromium: str, url: str, profile: Path, *, timeout_s: float = 120.0, screenshot: Path | None = None
) -> tuple[str, list[str]]:
    """Open `url` in headless Chromium and wait, in real time, until the page sets
    `<body data-ready>` to something other than "0" (a page whose work runs in WebAssembly workers
    outlives --virtual-time-budget); (its DOM then, the console messages and exceptions seen).

    With `screenshot`, a PNG of the whole page is written there. Driven through the DevTools protocol (websocket-client, a dependency of the kubernetes client)."""
    import json
    import re
    import subprocess
    import time
    import urllib.request

    import websocket

    proc = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1280,2400", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = None
        for line in proc.stderr:  # type: ignore[union-attr]
            found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if found:
                port = int(found.group(1))
                break
        assert port is not None, "Chromium did not open its DevTools port"
        deadline = time.monotonic() + timeout_s
        target = None
        while target is None and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                target = next((t for t in json.load(r) if t.get("type") == "page"), None)
            time.sleep(0.2)
        assert target is not None, "no page target in Chromium"
        ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        messages: list[str] = []
        ids = iter(range(1, 1_000_000))

        def call(method: str, **params: object) -> dict:
            n = next(ids)
            ws.send(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("method") == "Runtime.consoleAPICalled":
                    messages.append(
                        " ".join(str(a.get("value", a.get("description", ""))) for a in msg["params"]["args"])
                    )
                elif msg.get("method") == "Runtime.exceptionThrown":
                    messages.append(str(msg["params"]["exceptionDetails"].get("exception", {}).get("description")))
                elif msg.get("id") == n:
                    return msg.get("result", {})

        def evaluate(expression: str) -> object:
            return call("Runtime.evaluate", expression=expression, returnByValue=True).get("result", {}).get("value")

        call("Runtime.enable")
        while time.monotonic() < deadline:
            if evaluate("document.body ? document.body.dataset.ready : '0'") not in (None, "0"):
                break
            time.sleep(0.5)
        dom = str(evaluate("document.documentElement.outerHTML"))
        if screenshot is not None:
            import base64

            shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        ws.close()
        return dom, messages
    finally:
        proc.terminate()
        proc.wait(timeout=30)
