"""A deterministic OpenAI-compatible stub on 127.0.0.1 for tests and the benchmark (raw asyncio HTTP/1.1).

Answers /v1/chat/completions and /v1/completions in the chat logprobs shape with ids and bytes (as llama-server
does). The answer depends only on the request body: a toy model over a small vocabulary emits "d, d, d, ..."
with raw (pre-temperature) top-k logprobs. Faults are injected on the first requests, one per request, in the
order given: 429 (Retry-After), 500, 503, reset, timeout, truncated (cut JSON), nologprobs, refuse (400).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from dataclasses import dataclass, field

import numpy as np

VOCAB = ["1", "2", "3", "4", "5", "6", "7", "8", "9", ",", " ", "\n", "Sure", "!", " Here", " are", ":", "0",
         " 1", " 2", "x", "y", "z", ".", "a", "b", "c", "d"]
DIGITS = list(range(9))  # ids of "1".."9"
SLOW_S = 5.0  # how long a "timeout" fault sleeps before answering


def _rng(body: dict) -> np.random.Generator:
    prompt = json.dumps(body.get("messages") or body.get("prompt"), sort_keys=True)
    digest = hashlib.sha256(f"{prompt}|{body.get('seed')}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _entry(i: int, logp: np.ndarray) -> dict:
    return {"id": i, "token": VOCAB[i], "bytes": list(VOCAB[i].encode()), "logprob": float(logp[i])}


def generate(body: dict, choice: int = 0) -> tuple[str, list[dict], str]:
    """(text, logprobs.content, finish_reason) for one choice of a request."""
    rng = _rng(body)
    choice_rng = np.random.default_rng(rng.integers(2**63) + choice)
    k = int(body.get("top_logprobs") or body.get("logprobs") or 0) if body.get("logprobs") is not False else 0
    temperature = float(body.get("temperature", 1.0))
    max_tokens = int(body.get("max_tokens", 16))
    favourite = rng.integers(9)
    content, text = [], ""
    state = "item"
    for _ in range(max_tokens):
        logits = rng.normal(0, 1.0, len(VOCAB)) - 6.0
        if state == "item":
            logits[DIGITS] = rng.normal(0, 1.0, 9)
            logits[DIGITS[favourite]] += 2.0
        elif state == "comma":
            logits[9] = 6.0
        else:
            logits[10] = 6.0
        logp = logits - np.log(np.exp(logits).sum())
        scaled = logp / temperature
        p = np.exp(scaled - scaled.max())
        p /= p.sum()
        pick = int(choice_rng.choice(len(VOCAB), p=p))
        order = np.argsort(-logp, kind="stable")[:k]
        entry = _entry(pick, logp) | {"top_logprobs": [_entry(int(j), logp) for j in order]}
        content.append(entry)
        text += VOCAB[pick]
        state = {"item": "comma", "comma": "space", "space": "item"}[state]
    return text, content, "length"


def response_for(path: str, body: dict, logprobs: bool = True) -> dict:
    n = int(body.get("n") or 1)
    choices = []
    for c in range(n):
        text, content, finish = generate(body, c)
        lp = {"content": content} if logprobs and body.get("logprobs") else None
        if path.endswith("chat/completions"):
            choices.append({"index": c, "message": {"role": "assistant", "content": text}, "logprobs": lp,
                            "finish_reason": finish})
        else:
            choices.append({"index": c, "text": text, "logprobs": lp, "finish_reason": finish})
    return {"id": "stub", "object": "chat.completion", "model": body.get("model"), "choices": choices}


@dataclass
class Stub:
    """The running stub: its URL, the requests it saw, and the faults still to inject."""

    faults: list[str] = field(default_factory=list)
    retry_after: str = "1"
    delay: float = 0.0  # seconds before every answer
    port: int = 0
    requests: list[dict] = field(default_factory=list)
    served: int = 0
    memo: dict = field(default_factory=dict)  # (path, body) -> response bytes: keeps the stub near-instant

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
                raw = await reader.readexactly(int(headers.get("content-length", 0)))
                body = json.loads(raw) if raw else {}
                self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
                fault = self.faults.pop(0) if self.faults else None
                if self.delay:
                    await asyncio.sleep(self.delay)
                if fault == "reset":
                    writer.transport.abort()
                    return
                if fault == "timeout":
                    await asyncio.sleep(SLOW_S)
                status, extra, payload = 200, {}, None
                if fault == "429":
                    status, extra = 429, {"Retry-After": self.retry_after}
                    payload = {"error": {"message": "rate limited"}}
                elif fault in ("500", "503"):
                    status, payload = int(fault), {"error": {"message": "server trouble"}}
                elif fault == "refuse":
                    status, payload = 400, {"error": {"message": "This model does not support logprobs."}}
                if payload is None and fault != "nologprobs":
                    key = (path, raw)
                    if key not in self.memo:
                        self.memo[key] = json.dumps(response_for(path.split("?")[0], body)).encode()
                    data = self.memo[key]
                else:
                    data = json.dumps(payload or response_for(path.split("?")[0], body, logprobs=False)).encode()
                if fault == "truncated":
                    data = data[: len(data) // 2]
                reason = {200: "OK", 400: "Bad Request", 429: "Too Many Requests", 500: "Internal Server Error",
                          503: "Service Unavailable"}[status]
                head_out = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
                            f"Content-Length: {len(data)}"] + [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head_out) + "\r\n\r\n").encode() + data)
                await writer.drain()
                self.served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class StubServer:
    """Runs a Stub in a background thread; use as a context manager (always stopped on exit)."""

    def __init__(self, faults: list[str] | None = None, retry_after: str = "1", delay: float = 0.0):
        self.stub = Stub(faults=list(faults or []), retry_after=retry_after, delay=delay)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self.stub.handle, "127.0.0.1", 0, backlog=512))
        self.stub.port = server.sockets[0].getsockname()[1]
        self._server = server
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        pending = asyncio.all_tasks(self._loop)
        for t in pending:
            t.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def __enter__(self) -> Stub:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("stub server did not start")
        return self.stub

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def main() -> None:
    """Run the stub in the foreground: python tests/stubserver.py [--delay S] [fault ...] (prints the URL)."""
    import sys

    args, delay = sys.argv[1:], 0.0
    if args[:1] == ["--delay"]:
        delay, args = float(args[1]), args[2:]
    with StubServer(args, delay=delay) as stub:
        print(stub.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
