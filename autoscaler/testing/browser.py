"""Open a page in a real headless Chromium and report what a user's browser would complain about.

The browser is driven over the Chrome DevTools Protocol on loopback (aiohttp's websocket client):
``Runtime`` (uncaught exceptions, ``console.error``), ``Log`` (browser-side errors such as a
blocked or failed load) and ``Network`` (``loadingFailed``, HTTP errors) are enabled before the
page is navigated, events are collected until its ``load`` event and a short settle, then a PNG
screenshot is captured. The process is started here and stopped here, by its pid.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

#: Names Debian and other distributions install Chromium under.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The path of a Chromium on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    """What loading one page produced: a screenshot and every error the browser reported."""

    screenshot: bytes = b""
    exceptions: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    failed_loads: list[str] = field(default_factory=list)
    loaded: bool = False

    @property
    def problems(self) -> list[str]:
        """Every complaint, one line each (empty for a clean page)."""
        return [
            *(f"exception: {e}" for e in self.exceptions),
            *(f"console error: {e}" for e in self.console_errors),
            *(f"log error: {e}" for e in self.log_errors),
            *(f"failed load: {e}" for e in self.failed_loads),
            *([] if self.loaded else ["the page never fired its load event"]),
        ]


class _Session:
    """One CDP websocket: numbered commands, and the events seen so far."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, timeout_s: float, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        await self.ws.send_str(json.dumps({"id": number, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            message = await self.ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"DevTools connection closed during {method}")
            data = json.loads(message.data)
            if data.get("id") == number:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                result: dict[str, Any] = data.get("result", {})
                return result
            if "method" in data:
                self.events.append(data)

    async def drain(self, seconds: float) -> None:
        """Collect events for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await self.ws.receive(timeout=left)
            except TimeoutError:
                return
            if message.type is not aiohttp.WSMsgType.TEXT:
                return
            data = json.loads(message.data)
            if "method" in data:
                self.events.append(data)

    async def wait_for(self, method: str, timeout_s: float) -> bool:
        """Collect events until ``method`` arrives (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while not any(e["method"] == method for e in self.events):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await self.drain(min(left, 0.5))
        return True


def _classify(check: PageCheck, events: list[dict[str, Any]]) -> None:
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            check.exceptions.append(str(text))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            check.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            check.log_errors.append(f"{entry.get('text', '')} ({entry.get('url', '')})")
        elif method == "Network.loadingFailed":
            check.failed_loads.append(f"{params.get('errorText', '')} (request {params.get('requestId')})")
        elif method == "Network.responseReceived":
            response = params.get("response", {})
            if int(response.get("status", 0)) >= 400:
                check.failed_loads.append(f"HTTP {response['status']} {response.get('url', '')}")
        elif method == "Page.loadEventFired":
            check.loaded = True


async def _drive(port: int, url: str, width: int, height: int, timeout_s: float) -> PageCheck:
    check = PageCheck()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t.get("type") == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            session = _Session(ws)
            for domain in ("Page", "Runtime", "Log", "Network"):
                await session.call(f"{domain}.enable", timeout_s)
            await session.call("Emulation.setDeviceMetricsOverride", timeout_s, width=width, height=height,
                               deviceScaleFactor=1, mobile=False)
            await session.call("Page.navigate", timeout_s, url=url)
            await session.wait_for("Page.loadEventFired", timeout_s)
            # Late errors (a deferred script, a lazy image) arrive after load: give them a moment.
            await session.drain(0.5)
            shot = await session.call("Page.captureScreenshot", timeout_s, format="png")
            check.screenshot = base64.b64decode(shot["data"])
            _classify(check, session.events)
            with contextlib.suppress(Exception):
                await session.call("Browser.close", 5.0)
    return check


def check_page(
    path: Path, *, chromium: str | None = None, width: int = 1280, height: int = 1600, timeout_s: float = 60.0
) -> PageCheck:
    """Load ``path`` in headless Chromium (loopback DevTools) and return its screenshot and errors.

    Raises ``FileNotFoundError`` when no Chromium is installed and ``RuntimeError`` when the browser
    does not come up within ``timeout_s``.
    """
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("no chromium on PATH")
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # Chromium writes the port it bound into the profile once DevTools listens.
            marker = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + timeout_s
            while not (marker.exists() and marker.read_text().strip()):
                if process.poll() is not None:
                    raise RuntimeError(f"chromium exited with status {process.returncode} before DevTools")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"chromium's DevTools did not come up within {timeout_s:.0f} s")
                time.sleep(0.05)
            port = int(marker.read_text().split()[0])
            return asyncio.run(_drive(port, path.resolve().as_uri(), width, height, timeout_s))
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
