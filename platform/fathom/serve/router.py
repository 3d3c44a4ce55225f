"""Replica choice: least outstanding requests, with affinity for a shared prompt prefix.

A request carries a `routing_key`: a hash of its first prompt block(s) (`prefix_key`).
Rendezvous hashing maps the key to a preferred replica, stable as replicas come and go,
so requests sharing a system prompt land where its KV blocks are already cached. The
preference yields to load: when the preferred replica has `imbalance_ratio` times the
least-loaded replica's outstanding requests plus `imbalance_slack`, the request goes to the
least loaded instead. Requests without a key go to the least loaded replica.

`AffinityPolicy` is pure (unit-tested alone); `FathomRequestRouter` plugs it into Ray Serve's
`RequestRouter` interface, whose queue-length cache supplies the loads and which picks the
least loaded replica within each rank we return.
"""

import hashlib
from collections.abc import Hashable, Sequence

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

PREFIX_CHARS = 256  # about the first blocks of a prompt; shorter prompts get no affinity
PREFIX_TOKENS = 64


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def prefix_key(prompt: str | Sequence[int], chars: int = PREFIX_CHARS, tokens: int = PREFIX_TOKENS) -> int | None:
    """Hash of the first `chars` characters (text) or `tokens` ids; None when shorter."""
    if isinstance(prompt, str):
        if len(prompt) < chars:
            return None
        return _digest(prompt[:chars].encode("utf-8", "surrogatepass"))
    if len(prompt) < tokens:
        return None
    return _digest(b"t" + b",".join(str(t).encode() for t in prompt[:tokens]))


def chat_prefix_text(messages: Sequence[tuple[str, str]]) -> str:
    """A canonical text of (role, content) turns for `prefix_key`, cut once long enough."""
    out, n = [], 0
    for role, content in messages:
        out.append(f"<{role}>{content}")
        n += len(content) + len(role) + 2
        if n >= PREFIX_CHARS:
            break
    return "".join(out)


class AffinityPolicy:
    def __init__(self, imbalance_ratio: float = 2.0, imbalance_slack: int = 4):
        self.imbalance_ratio = imbalance_ratio
        self.imbalance_slack = imbalance_slack

    @staticmethod
    def preferred(key: int, replica_ids: Sequence[Hashable]) -> Hashable:
        """Rendezvous (highest random weight) hashing: the replica with the largest h(key, id)."""
        return max(replica_ids, key=lambda r: _digest(f"{key}:{r}".encode()))

    def rank(
        self, replica_ids: Sequence[Hashable], loads: dict[Hashable, int | None], key: int | None
    ) -> list[list[Hashable]]:
        """Ranks of replicas, most preferred first; the caller takes the least loaded in a rank.

        `loads[r]` is r's outstanding requests, None when unknown (treated as idle).
        """
        if not replica_ids:
            return []
        everyone = list(replica_ids)
        if key is None or len(everyone) == 1:
            return [everyone]
        best = self.preferred(key, everyone)
        known = [v for v in (loads.get(r) for r in everyone) if v is not None]
        least = min(known, default=0)
        load = loads.get(best) or 0
        if load > least * self.imbalance_ratio + self.imbalance_slack:
            return [everyone]
        return [[best], [r for r in everyone if r != best]]


class FathomRequestRouter(FIFOMixin, RequestRouter):
    """Ray Serve request router for the model deployment (configured by import path).

    Reads `routing_key` from the call's keyword arguments (`handle.generate.remote(...,
    routing_key=k)`); loads come from Serve's per-replica queue-length cache.
    """

    def initialize_state(self, imbalance_ratio: float = 2.0, imbalance_slack: int = 4, **_):
        self._policy = AffinityPolicy(imbalance_ratio, imbalance_slack)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        policy = getattr(self, "_policy", None) or AffinityPolicy()
        key = None
        if pending_request is not None:
            key = pending_request.kwargs.get("routing_key")
            pending_request.routing_context.should_backoff = True  # all ranks full: back off, retry
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = {rid: self._replica_queue_len_cache.get(r.replica_id) for rid, r in by_id.items()}
        ranks = policy.rank(sorted(by_id), loads, key)
        return [[by_id[rid] for rid in rank] for rank in ranks]
