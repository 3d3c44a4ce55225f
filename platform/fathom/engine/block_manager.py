"""Paged KV-cache bookkeeping: fixed-size blocks, ref counts, prefix hashing, LRU eviction.

Plain Python, no torch. A block holds `block_size` tokens' latent vectors on every layer.
A *full* block whose tokens are computed is identified by a chained hash of
(previous block's hash, cache salt, its token ids); a later sequence with the same prefix
and salt reuses it (ref count + 1) instead of recomputing it. Blocks whose ref count drops to
0 keep their hash and join an LRU list; allocation takes never-hashed free blocks first, then
evicts the least recently used cached block. The salt isolates tenants (and, when prefix
caching is off, confines sharing to the samples of one request).
"""

import hashlib
from array import array
from collections import OrderedDict, deque


def block_hash(parent: bytes | None, salt: str | None, token_ids) -> bytes:
    """sha256 over the parent hash, the salt and the block's token ids (collision-safe across tenants)."""
    h = hashlib.sha256(parent or b"")
    h.update((salt or "").encode() + b"\0")
    h.update(array("q", token_ids).tobytes())
    return h.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_count = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}  # hash -> block id (ref'd or in the LRU)
        self.free_plain: deque[int] = deque(range(num_blocks))
        self.free_lru: OrderedDict[int, None] = OrderedDict()  # ref 0 but hashed; oldest first

    # ----- accounting
    @property
    def num_free(self) -> int:
        return len(self.free_plain) + len(self.free_lru)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ----- prefix cache
    def match_prefix(self, token_ids: list[int], salt: str | None) -> tuple[list[int], list[bytes]]:
        """Cached blocks covering the longest full-block prefix of `token_ids`, leaving at least
        the last token to compute (its logits are needed). Does not take references."""
        blocks, hashes, parent = [], [], None
        for i in range((len(token_ids) - 1) // self.block_size):
            parent = block_hash(parent, salt, token_ids[i * self.block_size:(i + 1) * self.block_size])
            block = self.cached.get(parent)
            if block is None:
                break
            blocks.append(block)
            hashes.append(parent)
        return blocks, hashes

    def can_take(self, hit_blocks: list[int], num_new_blocks: int) -> bool:
        """Whether `hit_blocks` can be referenced and `num_new_blocks` allocated now."""
        reclaimed = sum(1 for b in hit_blocks if self.ref_count[b] == 0)
        return num_new_blocks <= self.num_free - reclaimed

    def take(self, hit_blocks: list[int]) -> None:
        for b in hit_blocks:
            if self.ref_count[b] == 0:
                del self.free_lru[b]
            self.ref_count[b] += 1

    # ----- allocation
    def allocate(self, n: int) -> list[int]:
        if n > self.num_free:
            raise RuntimeError(f"out of KV blocks: need {n}, {self.num_free} free")
        return [self._pop_free() for _ in range(n)]

    def _pop_free(self) -> int:
        if self.free_plain:
            block = self.free_plain.popleft()
        else:
            block, _ = self.free_lru.popitem(last=False)
            del self.cached[self.hash_of[block]]
            self.hash_of[block] = None
        self.ref_count[block] = 1
        return block

    def register(self, block: int, h: bytes) -> None:
        """Record that `block` now holds the full, computed block with hash `h`."""
        if self.hash_of[block] is None and h not in self.cached:
            self.hash_of[block] = h
            self.cached[h] = block

    def free(self, blocks: list[int]) -> None:
        """Drop one reference to each block; tail blocks first so the LRU evicts tails first."""
        for b in reversed(blocks):
            self.ref_count[b] -= 1
            assert self.ref_count[b] >= 0, f"block {b} freed twice"
            if self.ref_count[b] == 0:
                if self.hash_of[b] is None:
                    self.free_plain.append(b)
                else:
                    self.free_lru[b] = None

    def reset_prefix_cache(self) -> None:
        """Forget every unreferenced cached block (e.g. after weights change)."""
        for b in list(self.free_lru):
            del self.cached[self.hash_of[b]]
            self.hash_of[b] = None
            self.free_plain.append(b)
        self.free_lru.clear()
