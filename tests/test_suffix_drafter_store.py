"""The ``suffix`` drafter's structures: the anchor index finds exactly the earlier occurrences a
suffix tree would, and the global store stays within its token budget (LRU eviction, lazy
removal with rebuilds) over many requests, with a size estimate that matches real memory."""
from __future__ import annotations

import random
import tracemalloc

from draft_service.drafters.suffix.index import ORDERS, AnchorIndex
from draft_service.drafters.suffix.speculate import find_occurrences
from draft_service.drafters.suffix.store import GlobalStore


def _brute_force(docs: dict[int, list[int]], context: list[int], max_match: int) -> dict:
    """(doc, end) -> match length for every earlier occurrence with a continuation, using the
    longest anchor order that occurs anywhere (what ``find_occurrences`` promises)."""
    for order in ORDERS:
        if order > len(context):
            continue
        found = {}
        for doc_id, doc in docs.items():
            for end in range(order - 1, len(doc) - 1):
                m = 0
                while m < max_match and m <= end and m < len(context) and doc[end - m] == context[-1 - m]:
                    m += 1
                if m >= order:
                    found[(doc_id, end)] = m
        if found:
            return found
    return {}


def test_index_finds_every_occurrence_with_its_match_length():
    rng = random.Random(3)
    index = AnchorIndex()
    docs = {}
    for doc_id in range(12):
        docs[doc_id] = [rng.randrange(4) for _ in range(rng.randint(1, 40))]
        index.extend(doc_id, docs[doc_id][:5])  # documents grow in pieces, like a request
        index.extend(doc_id, docs[doc_id][5:])
    for doc_id in (2, 7):  # removed documents are never returned, rebuilt or not
        index.remove(doc_id)
        del docs[doc_id]
    for _ in range(200):
        context = [rng.randrange(4) for _ in range(rng.randint(1, 9))]
        got = find_occurrences(context, [index], limit=10_000, max_match=6)
        assert {(o.doc_id, o.end): o.match for o in got} == _brute_force(docs, context, 6)
    assert index.tokens == sum(len(d) for d in docs.values())


def test_occurrences_are_most_recent_first_and_limited():
    index = AnchorIndex()
    for doc_id in range(10):
        index.extend(doc_id, [7, 8, doc_id])
    got = find_occurrences([1, 7, 8], [index], limit=3, max_match=8)
    assert [(o.doc_id, o.end, o.match) for o in got] == [(9, 1, 2), (8, 1, 2), (7, 1, 2)]


def test_eviction_keeps_the_store_within_budget_over_10000_requests():
    budget = 4000
    store = GlobalStore(budget)
    rng = random.Random(11)
    max_entries = max_keys = 0
    for i in range(10_000):
        # Mostly short outputs; now and then one longer than the whole budget.
        n = 5000 if i % 500 == 499 else rng.choice((1, 3, 10, 40, 150))
        store.add([rng.randrange(500) for _ in range(n)])
        if i % 7 == 0:  # some documents keep supplying drafts
            store.touch(range(max(0, i - 50), i, 5))
        assert store.tokens <= budget
        max_entries = max(max_entries, store.index.entries)
        max_keys = max(max_keys, store.index.keys)
    # Live entries are at most len(ORDERS) per token; dead ones at most as many again (+ slack).
    assert max_entries <= 2 * len(ORDERS) * budget + 4096
    assert max_keys <= max_entries
    assert store.stats()["evicted_documents"] > 9000
    assert sum(len(d) for d in store.index.docs.values()) == store.tokens


def test_least_recently_used_documents_are_evicted_first():
    store = GlobalStore(30)
    ids = [store.add([i] * 10) for i in range(3)]  # full: 30 tokens
    store.touch([ids[0]])  # the oldest supplied a draft
    store.add([9] * 10)  # evicts ids[1], the least recently used
    assert set(store.index.docs) == {ids[0], ids[2], 3}
    store.add(list(range(100)))  # longer than the budget: its last 30 tokens, alone
    assert list(store.index.docs) == [4] and list(store.index.docs[4]) == list(range(70, 100))


def test_reported_bytes_match_measured_memory():
    rng = random.Random(5)
    for vocab in (300, 50_000):  # few distinct anchors / mostly distinct anchors
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        store = GlobalStore(20_000)
        for _ in range(1500):
            store.add([rng.randrange(vocab) for _ in range(rng.randint(1, 60))])
        measured = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        reported = store.stats()["bytes"]
        assert 0.7 * measured <= reported <= 1.4 * measured, (vocab, reported, measured)
