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
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parents[1]
MODEL = "fathom-demo"


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that accepts and drops (a collector elsewhere would do the work)."""

    received: ClassVar[dict[str, int]] = {"requests": 0, "bytes": 0}

    def do_POST(self):
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): what the server spent, whatever else
    runs on the machine; wall-clock throughput on a shared machine is much noisier."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int) -> None:
    """Child process: the ingress app over an in-process model replica, on 127.0.0.1:port."""
    import faulthandler
    import signal

    import uvicorn

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks on demand if a round stalls

    from fathom.api.serve import ServeSettings
    from fathom.serve.frontend import Frontend
    from fathom.serve.model_server import ModelServer
    from fathom.serve.routes import build_api

    settings = ServeSettings(engine={"max_model_len": 512, "max_num_seqs": 32})
    app = build_api(Frontend(ModelServer(settings), settings))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


def start_server(tracing: bool, sink: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "platform"), env.get("PYTHONPATH", "")])
    if tracing:
        # export every second, so the export work falls inside the measured rounds
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=sink, OTEL_SERVICE_NAME="fathom-bench",
                   OTEL_TRACES_SAMPLER="always_on", OTEL_BSP_SCHEDULE_DELAY="1000")
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
            await workload(base, args.concurrency, args.concurrency, args.max_tokens)  # warm-up: one-off costs
        rates: dict[str, list[float]] = {"on": [], "off": []}
        cpu: dict[str, list[float]] = {"on": [], "off": []}  # server CPU ms per output token
        for r in range(args.rounds):
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                cpu0 = cpu_seconds(servers[mode][0].pid)
                try:
                    tokens, seconds = await asyncio.wait_for(
                        workload(servers[mode][1], args.requests, args.concurrency, args.max_tokens), args.round_timeout)
                except TimeoutError:
                    servers[mode][0].send_signal(signal.SIGUSR1)  # the stalled server prints its threads' stacks
                    await asyncio.sleep(2)
                    raise SystemExit(f"round {r + 1} with tracing {mode} stalled for {args.round_timeout} s") from None
                rates[mode].append(tokens / seconds)
                cpu[mode].append((cpu_seconds(servers[mode][0].pid) - cpu0) * 1e3 / tokens)
                print(f"round {r + 1} tracing {mode:>3}: {tokens} tokens in {seconds:.2f} s = "
                      f"{tokens / seconds:.1f} tok/s, server CPU {cpu[mode][-1]:.2f} ms/token", flush=True)
        on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
        print(f"\nmedian tok/s  tracing on: {on:.1f}  tracing off: {off:.1f}  ratio on/off: {on / off:.3f} "
              f"({(1 - on / off) * 100:+.1f}% throughput loss)")
        c_on, c_off = statistics.median(cpu["on"]), statistics.median(cpu["off"])
        print(f"median server CPU ms/token  tracing on: {c_on:.2f}  tracing off: {c_off:.2f}  "
              f"ratio off/on: {c_off / c_on:.3f} ({(c_on / c_off - 1) * 100:+.1f}% CPU per token)")
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
    parser.add_argument("--round-timeout", type=float, default=300, help="seconds before a round counts as stalled")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
    else:
        asyncio.run(main(args))
