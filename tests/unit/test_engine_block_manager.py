import pytest

from fathom.engine.block_manager import BlockManager


def test_allocate_free_and_refcounts():
    bm = BlockManager(4, 2)
    a = bm.allocate(3)
    assert bm.num_free == 1 and bm.num_used == 3
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        bm.allocate(2)
    bm.free(a)
    assert bm.num_free == 4


def test_prefix_match_leaves_last_token_and_respects_salt():
    bm = BlockManager(8, 2)
    tokens = [1, 2, 3, 4, 5, 6]
    blocks = bm.allocate(3)
    hits, _hashes = bm.match_prefix(tokens, None)
    assert hits == []
    # publish the three full blocks
    from fathom.engine.block_manager import block_hash

    parent = None
    for i, b in enumerate(blocks):
        parent = block_hash(parent, None, tokens[2 * i:2 * i + 2])
        bm.register(b, parent)
    hits, _ = bm.match_prefix(tokens, None)
    assert hits == blocks[:2]  # the last full block holds the last token, which must be recomputed
    assert bm.match_prefix(tokens + [7], None)[0] == blocks
    assert bm.match_prefix(tokens + [7], "tenant-b")[0] == []
    assert bm.match_prefix([1, 2, 9, 9, 9], None)[0] == blocks[:1]


def test_lru_eviction_prefers_plain_free_then_oldest_cached():
    from fathom.engine.block_manager import block_hash

    bm = BlockManager(3, 1)
    a, b, c = bm.allocate(3)
    bm.register(a, block_hash(None, None, [10]))
    bm.register(b, block_hash(None, None, [20]))
    bm.free([a])
    bm.free([b])
    bm.free([c])  # c was never hashed: it is reused first
    assert bm.allocate(1) == [c]
    assert bm.allocate(1) == [a]  # oldest cached evicted next, its hash forgotten
    assert bm.match_prefix([10, 0], None)[0] == []
    assert bm.match_prefix([20, 0], None)[0] == [b]
    assert bm.can_take([b], 0) and not bm.can_take([b], 1)
    bm.take([b])
    assert bm.ref_count[b] == 1 and bm.num_free == 0
