"""Soak: does a `fathom serve` leak under steady mixed traffic (good requests, hostile ones,
abandoned streams)? Starts the server (demo model), drives it for `--minutes`, samples the RSS
of the server and all its descendants (Ray workers, replicas, engine cores) every `--every`
seconds, and prints the growth from the first sample after warm-up to the last.

    python benchmarks/soak.py --minutes 30          # the issue's check
    python benchmarks/soak.py --minutes 3 --every 10  # a short run

Exit status 1 when any process's RSS grew more than `--max-growth` (fraction) after warm-up, or when any
request got a 5xx."""

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = "fathom-demo"


def tree_rss_mb(root: int) -> dict[int, tuple[str, float]]:
    """{pid: (command name, RSS MiB)} for `root` and all its descendants."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,ppid=,rss=,comm="], capture_output=True, text=True, check=True
    ).stdout
    children: dict[int, list[int]] = {}
    rss: dict[int, tuple[str, float]] = {}
    for line in out.splitlines():
        pid, ppid, kb, comm = line.split(None, 3)
        children.setdefault(int(ppid), []).append(int(pid))
        rss[int(pid)] = (comm.strip(), int(kb) / 1024)
    tree, stack = {}, [root]
    while stack:
        pid = stack.pop()
        if pid in rss:
            tree[pid] = rss[pid]
        stack.extend(children.get(pid, []))
    return tree


HOSTILE = [
    b'{"model":"fathom-demo","messages":[{"role":"user","content":"hi"}],"top_k":9223372036854775808}',
    b'{"model":"fathom-demo","prompt":[[7],[8]],"n":100}',
    b'{"model":"fathom-demo","x":' + b"[" * 2000,
    b'{"model":"\\ud800","messages":[]}',
    b"not json",
]


async def traffic(url: str, stop_at: float, stats: dict) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while time.monotonic() < stop_at:
            kind = random.random()
            try:
                if kind < 0.5:
                    r = await client.post(
                        "/v1/chat/completions",
                        json={
                            "model": MODEL,
                            "messages": [{"role": "user", "content": f"tell me {random.randint(0, 9999)}"}],
                            "max_tokens": random.randint(1, 64),
                        },
                    )
                elif kind < 0.7:
                    r = await client.post(
                        "/v1/completions",
                        content=random.choice(HOSTILE),
                        headers={"Content-Type": "application/json"},
                    )
                else:  # a stream abandoned half-way
                    async with client.stream(
                        "POST",
                        "/v1/completions",
                        json={"model": MODEL, "prompt": "x", "max_tokens": 128, "stream": True},
                    ) as r:
                        async for _ in r.aiter_lines():
                            break
                stats["requests"] += 1
                stats["5xx"] += r.status_code >= 500
            except httpx.HTTPError:
                stats["errors"] += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--every", type=float, default=30, help="seconds between RSS samples")
    ap.add_argument("--warmup", type=float, default=60, help="seconds of traffic before the baseline sample")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-growth", type=float, default=0.05, help="per process")
    args = ap.parse_args()

    port = 18000 + random.randint(0, 999)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "fathom.cli", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            print("server did not become ready", file=sys.stderr)
            return 2
        return asyncio.run(soak(args, url, proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()


async def soak(args, url: str, server_pid: int) -> int:
    stats = {"requests": 0, "5xx": 0, "errors": 0}
    start = time.monotonic()
    stop_at = start + args.minutes * 60
    load = [asyncio.create_task(traffic(url, stop_at, stats)) for _ in range(args.clients)]
    samples: list[tuple[float, dict[int, tuple[str, float]]]] = []
    while time.monotonic() < stop_at:
        await asyncio.sleep(args.every)
        samples.append((time.monotonic() - start, await asyncio.to_thread(tree_rss_mb, server_pid)))
        total = sum(mb for _, mb in samples[-1][1].values())
        core = " ".join(
            f"{n}={mb:.1f}" for n, mb in sorted(samples[-1][1].values()) if n in ("gcs_server", "raylet")
        )
        print(
            f"t={samples[-1][0]:7.0f}s rss={total:8.1f} MiB ({len(samples[-1][1])} processes; {core}) "
            f"requests={stats['requests']} 5xx={stats['5xx']}",
            flush=True,
        )
    await asyncio.gather(*load)
    after = [s for s in samples if s[0] >= args.warmup] or samples
    base, last = after[0][1], after[-1][1]
    worst = 0.0
    print(f"\nper process, RSS after warm-up -> end ({after[0][0]:.0f}s -> {after[-1][0]:.0f}s):")
    for pid in sorted(set(base) & set(last), key=lambda p: -last[p][1]):
        growth = (last[pid][1] - base[pid][1]) / base[pid][1] if base[pid][1] else 0.0
        worst = max(worst, growth)
        print(
            f"  {pid:>8} {last[pid][0][:28]:<28} {base[pid][1]:8.1f} -> {last[pid][1]:8.1f} MiB ({growth:+.1%})"
        )
    b_total, l_total = sum(v[1] for v in base.values()), sum(v[1] for v in last.values())
    print(
        f"\nsoak {args.minutes:g} min: {stats['requests']} requests, {stats['5xx']} 5xx, {stats['errors']} "
        f"transport errors; RSS {b_total:.1f} -> {l_total:.1f} MiB after warm-up "
        f"({(l_total - b_total) / b_total:+.1%}); worst process {worst:+.1%}"
    )
    return 0 if worst <= args.max_growth and stats["5xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
