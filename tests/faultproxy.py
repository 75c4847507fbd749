"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1 (stdlib asyncio) for tests: it sits in front of a real server
and breaks a fixed share of the requests, cycling through every fault kind, and logs what it did.

Fault kinds: 429 (with Retry-After), 500, 503, reset (connection dropped before an answer), hang (no answer: the
client's timeout must fire), truncated (the real answer cut in half), nologprobs (the real answer, its logprobs
removed), outage (the proxy stops listening for a while: the server went away, then comes back).

A request the server has answered once is answered from the proxy's memory when the client asks again (after a
mangled answer), so the server sees every distinct request once and in the order of a fault-free run: the
llama.cpp server reuses its KV cache between requests, and a repeated prompt would be decoded in different
batches (logprobs moving in the last bits), which is the server's business, not a fault's.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

KINDS = ("429", "500", "503", "reset", "hang", "truncated", "nologprobs", "outage")


@dataclass
class Proxy:
    upstream: tuple[str, int]
    rate: float = 0.3  # share of requests faulted (a fixed pattern, not luck: every 10th, 3 of them)
    outage_s: float = 2.0
    hang_s: float = 30.0  # longer than the client's timeout
    retry_after: str = "1"
    port: int = 0
    log: list[dict] = field(default_factory=list)  # one entry per request: index, path, fault (or None)
    memo: dict = field(default_factory=dict)
    forwarded: int = 0
    _server: asyncio.base_events.Server | None = None
    _faults: int = 0

    def fault_for(self, index: int) -> str | None:
        slots = round(self.rate * 10)
        if index % 10 not in [round(k * 10 / max(slots, 1)) for k in range(slots)] or slots == 0:
            return None
        kind = KINDS[self._faults % len(KINDS)]
        self._faults += 1
        return kind

    async def start(self) -> None:
        self._server = await asyncio.start_server(self.handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def outage(self) -> None:
        """Stop listening (connections are refused), then listen again on the same port."""
        self._server.close()
        await asyncio.sleep(self.outage_s)
        await self.start()

    async def forward(self, head: bytes, raw: bytes) -> tuple[int, bytes]:
        key = (head.split(b"\r\n", 1)[0], raw)
        if key in self.memo:
            return self.memo[key]
        reader, writer = await asyncio.open_connection(*self.upstream)
        lines = [l for l in head.decode("latin-1").split("\r\n") if l and not l.lower().startswith("connection:")]
        writer.write(("\r\n".join(lines) + "\r\nConnection: close\r\n\r\n").encode("latin-1") + raw)
        await writer.drain()
        data = await reader.read()
        writer.close()
        self.forwarded += 1
        _, _, body = data.partition(b"\r\n\r\n")
        status = int(data.split(b" ", 2)[1])
        self.memo[key] = (status, body)
        return self.memo[key]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(l.split(b":", 1)[1]) for l in head.split(b"\r\n")
                               if l.lower().startswith(b"content-length:")), 0)
                raw = await reader.readexactly(length)
                index = len(self.log)
                fault = self.fault_for(index)
                path = head.split(b" ", 2)[1].decode()
                self.log.append({"index": index, "path": path, "fault": fault})
                if fault in ("reset", "outage"):
                    writer.transport.abort()
                    if fault == "outage":
                        await self.outage()
                    return
                if fault == "hang":
                    await asyncio.sleep(self.hang_s)
                    writer.transport.abort()
                    return
                extra = {}
                if fault == "429":
                    status, body, extra = 429, b'{"error": {"message": "rate limited"}}', {"Retry-After":
                                                                                          self.retry_after}
                elif fault in ("500", "503"):
                    status, body = int(fault), b'{"error": {"message": "server trouble"}}'
                else:
                    status, body = await self.forward(head, raw)
                    if fault == "truncated":
                        body = body[: len(body) // 2]
                    elif fault == "nologprobs":
                        data = json.loads(body)
                        for choice in data.get("choices", []):
                            choice["logprobs"] = None
                        body = json.dumps(data).encode()
                out = [f"HTTP/1.1 {status} X", "Content-Type: application/json", f"Content-Length: {len(body)}"]
                out += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def kinds_hit(self) -> set[str]:
        return {e["fault"] for e in self.log if e["fault"]}


class FaultProxy:
    """Runs a Proxy on its own event loop in a thread; a context manager yielding the Proxy."""

    def __init__(self, upstream_url: str, **options):
        host_port = upstream_url.split("://", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        self.proxy = Proxy(upstream=(host, int(port)), **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.proxy.start(), self._loop).result(10)
        return self.proxy

    def __exit__(self, *exc) -> None:
        async def stop():
            if self.proxy._server is not None:
                self.proxy._server.close()
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
