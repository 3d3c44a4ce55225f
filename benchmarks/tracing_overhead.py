"""Tracing overhead: the same streaming workload with tracing on and off, side by side in one run.

Two identical servers run as child processes: the real ingress app (FastAPI, tenancy gate,
Frontend) over a real model replica (ModelServer, AsyncEngine, demo model), on loopback HTTP.
One traces every request (sampler always_on) and exports OTLP/HTTP to a sink in this process;
the other has no exporter, so nothing is installed (the default when OTEL_* is unset). Rounds
alternate between them (on, off, on, off, ...) so load from other processes hits both alike;
the script prints output tokens/s per round, the medians and the ratio on/off.

    python benchmarks/tracing_overhead.py --requests 32 --concurrency 16 --max-tokens 32 --rounds 3

Per request, tracing on records: the SERVER span (FastAPI), auth and limits spans, the
`chat` span with queue/prefill/decode/detokenize children, and one `fathom.forward` span
per engine step (linked to every request in the batch).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "fathom-demo"


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that accepts and drops (a collector elsewhere would do the work)."""

    received = {"requests": 0, "bytes": 0}

    def do_POST(self):  # noqa: N802
        n = int(self.headers.get("Content-Length", 0))
        self.rfile.read(n)
        _Sink.received["requests"] += 1
        _Sink.received["bytes"] += n
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int) -> None:
    """Child process: the ingress app over an in-process model replica, on 127.0.0.1:port."""
    import uvicorn

    from fathom.api.serve import ServeSettings
    from fathom.serve.api import build_api
    from fathom.serve.frontend import Frontend
    from fathom.serve.model_server import ModelServer

    settings = ServeSettings(engine={"max_model_len": 512, "max_num_seqs": 32})
    app = build_api(Frontend(ModelServer(settings), settings))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


def start_server(tracing: bool, sink: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "platform"), env.get("PYTHONPATH", "")])
    if tracing:
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=sink, OTEL_SERVICE_NAME="fathom-bench",
                   OTEL_TRACES_SAMPLER="always_on")
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], env=env)
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(base: str, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            try:
                if (await http.get(f"{base}/health", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"server at {base} did not become healthy")


async def workload(base: str, requests: int, concurrency: int, max_tokens: int) -> tuple[int, float]:
    """(completion tokens, seconds) of `requests` streamed chats, `concurrency` in flight."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> int:
        async with gate:
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"Request {i}: tell me about the sea."}],
                max_tokens=max_tokens, temperature=0, stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            tokens = 0
            async for chunk in stream:
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            return tokens

    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(requests))))
    return tokens, time.perf_counter() - t0


async def main(args) -> None:
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
    servers = {"on": start_server(True, endpoint), "off": start_server(False, endpoint)}
    try:
        for _, base in servers.values():
            await wait_ready(base)
            await workload(base, 4, 4, 4)  # warm-up: first requests pay one-off costs
        rates: dict[str, list[float]] = {"on": [], "off": []}
        for r in range(args.rounds):
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                tokens, seconds = await workload(servers[mode][1], args.requests, args.concurrency, args.max_tokens)
                rates[mode].append(tokens / seconds)
                print(f"round {r + 1} tracing {mode:>3}: {tokens} tokens in {seconds:.2f} s = "
                      f"{tokens / seconds:.1f} tok/s", flush=True)
        on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
        print(f"\nmedian tok/s  tracing on: {on:.1f}  tracing off: {off:.1f}  ratio on/off: {on / off:.3f} "
              f"({(1 - on / off) * 100:+.1f}% throughput loss)")
        print(f"OTLP sink received {_Sink.received['requests']} export requests, {_Sink.received['bytes']} bytes")
        if _Sink.received["requests"] == 0:
            raise SystemExit("tracing-on server exported nothing: the comparison would be meaningless")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
        sink.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=32, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--max-tokens", type=int, default=32, help="completion tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode (alternating)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
    else:
        asyncio.run(main(args))
