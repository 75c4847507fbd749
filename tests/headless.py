"""Open a page in headless Chromium over the DevTools protocol (--remote-debugging-pipe, no extra package):
take a full-page screenshot and list every request the page made."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
         "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe")


def chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)


class Pipe:
    """DevTools messages: NUL-terminated JSON, written to the browser's fd 3, read from its fd 4."""

    def __init__(self, binary: str, profile: str):
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()

        def child_fds():  # the pipe's ends become fds 3 and 4 (copied high first, in case they are 3 or 4)
            r, w = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     pass_fds=(3, 4, to_browser_r, from_browser_w), preexec_fn=child_fds,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self._read(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)
        raise TimeoutError(method)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for m in self.events:
            if m.get("method") == method:
                return m
        while time.monotonic() < deadline:
            m = self._read(deadline)
            self.events.append(m)
            if m.get("method") == method:
                return m
        raise TimeoutError(method)

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._r], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise TimeoutError("no message from chromium")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._w)
        os.close(self._r)


def screenshot(page: Path, width: int = 1200, height: int = 900) -> tuple[bytes, list[str]]:
    """(full-page PNG, URLs of every request the page sent) for a local HTML file."""
    binary = chromium()
    assert binary, "chromium is not installed"
    with tempfile.TemporaryDirectory() as profile:
        pipe = Pipe(binary, profile)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for method in ("Network.enable", "Page.enable"):
                pipe.send(method, session=session)
            pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                             "deviceScaleFactor": 1, "mobile": False},
                      session=session)
            pipe.send("Page.navigate", {"url": Path(page).resolve().as_uri()}, session=session)
            pipe.wait_event("Page.loadEventFired")
            time.sleep(0.3)  # anything the page would fetch after load
            shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                             session=session)
            requests = [m["params"]["request"]["url"] for m in pipe.events
                        if m.get("method") == "Network.requestWillBeSent" and m.get("sessionId") == session]
            return base64.b64decode(shot["data"]), requests
        finally:
            pipe.close()


def ink(png: bytes) -> tuple[float, int]:
    """(share of pixels that are not the background colour, number of distinct colours) of a PNG."""
    import io

    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    flat = img.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    background = colours[np.argmax(counts)]
    return float((flat != background).any(axis=1).mean()), int(len(colours))
