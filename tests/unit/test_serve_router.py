from collections import Counter

from fathom.serve.router import AffinityPolicy, chat_prefix_text, prefix_key

REPLICAS = ["r0", "r1", "r2", "r3"]


def test_prefix_key_needs_a_full_prefix_and_ignores_the_rest():
    head = "s" * 300
    assert prefix_key("short") is None
    assert prefix_key(head + "question one") == prefix_key(head + "another question")
    assert prefix_key("x" + head) != prefix_key(head)
    assert prefix_key(list(range(10))) is None
    assert prefix_key(list(range(64)) + [1]) == prefix_key(list(range(64)) + [2])


def test_chat_prefix_text_stops_once_long_enough():
    system = ("system", "You are helpful. " * 20)
    a = chat_prefix_text([system, ("user", "hi")])
    b = chat_prefix_text([system, ("user", "bye")])
    assert a == b  # the system prompt alone fills the prefix
    assert prefix_key(a) is not None


def test_same_key_prefers_same_replica_when_balanced():
    policy = AffinityPolicy()
    loads = {r: 3 for r in REPLICAS}
    key = prefix_key("p" * 300)
    ranks = policy.rank(REPLICAS, loads, key)
    assert len(ranks) == 2 and len(ranks[0]) == 1
    assert ranks[0] == policy.rank(list(reversed(REPLICAS)), loads, key)[0]
    assert sorted(ranks[0] + ranks[1]) == REPLICAS


def test_keys_spread_over_replicas():
    policy = AffinityPolicy()
    firsts = Counter(policy.rank(REPLICAS, {}, prefix_key(f"{i:04d}" * 80))[0][0] for i in range(400))
    assert set(firsts) == set(REPLICAS)
    assert min(firsts.values()) > 50  # roughly uniform (100 each)


def test_rendezvous_keeps_keys_when_a_replica_leaves():
    policy = AffinityPolicy()
    keys = [prefix_key(f"{i:04d}" * 80) for i in range(200)]
    before = {k: policy.preferred(k, REPLICAS) for k in keys}
    after = {k: policy.preferred(k, REPLICAS[:3]) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "r3" for k in moved)  # only r3's keys move


def test_overloaded_preferred_replica_is_skipped():
    policy = AffinityPolicy(imbalance_ratio=2.0, imbalance_slack=4)
    key = prefix_key("p" * 300)
    best = policy.preferred(key, REPLICAS)
    loads = {r: 2 for r in REPLICAS}
    loads[best] = 8  # = 2 * 2 + 4: still preferred
    assert policy.rank(REPLICAS, loads, key)[0] == [best]
    loads[best] = 9
    assert policy.rank(REPLICAS, loads, key) == [REPLICAS]


def test_no_key_means_least_loaded_among_all():
    policy = AffinityPolicy()
    assert policy.rank(REPLICAS, {"r0": 5}, None) == [REPLICAS]
    assert policy.rank([], {}, 1) == []
    assert policy.rank(["r0"], {}, 123) == [["r0"]]
