"""Issue 12: the local Ray instance `fathom serve` starts listens on 127.0.0.1 only: every
listening TCP socket of its process tree (GCS, raylet, workers, agents) is on loopback.
Read from the kernel's socket table (`ss -ltnp`), as an admin would check. (Serve then adds one
socket Ray binds on every interface, each replica's token-authenticated gRPC server for calls
between deployments; `fathom serve` says so on its console.)"""

import shutil
import subprocess
import sys
import textwrap

import pytest

from support.serve_process import ENV, ROOT

pytestmark = [pytest.mark.slow,  # a Ray instance: ~15 s on 2 cores
              pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")]

PROBE = textwrap.dedent("""
    import os, subprocess, time
    from fathom.api.serve import ServeSettings
    from fathom.serve.launch import start_ray
    import ray

    start_ray(ServeSettings())

    @ray.remote(num_cpus=0)
    def worker_up():
        return 1

    ray.get(worker_up.remote())  # a worker process with its gRPC server
    time.sleep(3)  # the agents open their ports
    print(subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout)
    print("TREE", os.getpid(), subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.replace("\\n", ";"))
    ray.shutdown()
""")


def _tree(root: int, table: str) -> set[int]:
    rows = [tuple(map(int, r.split())) for r in table.split(";") if r.strip()]
    pids, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in rows:
            if ppid in pids and pid not in pids:
                pids.add(pid)
                grew = True
    return pids


def test_every_socket_of_the_local_ray_instance_is_on_loopback():
    proc = subprocess.run([sys.executable, "-c", PROBE], check=False, capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sockets, _, tail = proc.stdout.partition("TREE ")
    root, _, tree = tail.partition(" ")
    ours = _tree(int(root), tree)
    listening = [line.split() for line in sockets.splitlines() if line.strip()]
    mine = [(f[3], f[5]) for f in listening if len(f) > 5 and any(f"pid={p}," in f[5] for p in ours)]
    assert len(mine) >= 4, sockets  # GCS, raylet (2), the driver's and the worker's gRPC servers
    exposed = [(addr, who) for addr, who in mine
               if not addr.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:") in ("127.0.0.1", "::1")]
    assert not exposed, f"Ray sockets not on loopback: {exposed}"

