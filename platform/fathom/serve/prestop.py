"""`python -m fathom.serve.prestop head|worker --timeout S`: the Ray pods' preStop hook.

Kubernetes runs it before it sends SIGTERM to a Ray container (eviction, node drain, rollout,
scale-down), so a pod leaves the way `fathom serve` does on SIGTERM instead of dropping what it
serves:

- head: the ingress stops accepting (new requests 503 + Retry-After, /health 503, so load
  balancers move on) and the hook waits until the requests in flight have finished;
- worker: the node is drained in Ray (`ray drain-node`, deadline S), so Serve starts the model
  replicas elsewhere and stops the ones here gracefully; the hook waits until no Serve replica
  runs on this node.

Either way it returns within S seconds (the operator sets terminationGracePeriodSeconds above
it), and never fails: a preStop hook must not keep a pod from terminating.
"""

import argparse
import asyncio
import logging
import subprocess
import sys
import time

log = logging.getLogger("fathom.prestop")
POLL_S = 1.0


async def drain_head(deadline: float, app_name: str) -> None:
    """(In an event loop: Fathom runs Serve's handle router on the caller's loop.)"""
    from ray import serve

    ingress = serve.get_deployment_handle("ingress", app_name=app_name)
    while time.monotonic() < deadline:
        inflight = await asyncio.wait_for(ingress.drain.remote(), max(1.0, deadline - time.monotonic()))
        if inflight == 0:
            return
        log.info("%d requests in flight", inflight)
        await asyncio.sleep(POLL_S)


def drain_worker(deadline: float) -> None:
    import ray
    from ray.util.state import list_actors

    remaining = max(1, int(deadline - time.monotonic()))
    subprocess.run(["ray", "drain-node", "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message",
                    "Kubernetes is terminating the pod", "--deadline-remaining-seconds", str(remaining)],
                   check=False, timeout=remaining)
    node = ray.get_runtime_context().get_node_id()
    while time.monotonic() < deadline:
        alive = list_actors(filters=[("node_id", "=", node), ("state", "=", "ALIVE")], raise_on_missing_output=False)
        replicas = [a for a in alive if a.class_name.startswith("ServeReplica")]
        if not replicas:
            return
        log.info("%d Serve replicas still on this node", len(replicas))
        time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fathom.serve.prestop", description=__doc__.splitlines()[0])
    p.add_argument("role", choices=("head", "worker"))
    p.add_argument("--timeout", type=float, required=True, help="seconds to drain at most")
    p.add_argument("--app-name", default="fathom", help="the Serve application (head)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fathom preStop: %(message)s")
    deadline = time.monotonic() + args.timeout
    try:
        import ray

        ray.init(address="auto", log_to_driver=False, logging_level=logging.WARNING)
        if args.role == "head":
            asyncio.run(drain_head(deadline, args.app_name))
        else:
            drain_worker(deadline)
    except Exception as e:  # noqa: BLE001 - report, never block the pod's termination
        log.warning("drain incomplete: %s: %s", type(e).__name__, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
