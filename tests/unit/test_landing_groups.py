"""How the landing DAGs cut work into tasks: small uploads a few per task, a large batch's shards one each."""
from __future__ import annotations

from components.orchestration.landing import BATCHES_PER_TASK, in_groups, pack


def shard(batch: str, k: int, of: int, rows: int) -> dict:
    return {"batch": batch, "content_md5": "x", "shard": k, "of": of, "rows": rows}


def test_groups_are_consecutive_and_bounded():
    names = [f"b{k}" for k in range(2 * BATCHES_PER_TASK + 1)]
    groups = in_groups(names)
    assert [len(g) for g in groups] == [BATCHES_PER_TASK, BATCHES_PER_TASK, 1]
    assert [n for g in groups for n in g] == names and in_groups([]) == []
    assert in_groups(names[:3], 1) == [["b0"], ["b1"], ["b2"]]


def test_pack_keeps_a_large_batch_one_shard_per_task_and_packs_small_uploads():
    big = [shard("big", k, 3, 50_000) for k in range(3)]  # a batch cut at shard_rows: one task each
    small = [shard(f"s{k}", 0, 1, 40) for k in range(BATCHES_PER_TASK + 2)]
    tasks = pack(big + small, max_rows=50_000)
    assert [[(s["batch"], s["shard"]) for s in t] for t in tasks[:3]] == [[("big", 0)], [("big", 1)], [("big", 2)]]
    assert [len(t) for t in tasks[3:]] == [BATCHES_PER_TASK, 2]  # at most BATCHES_PER_TASK shards a task
    assert [s for t in tasks for s in t] == big + small  # nothing dropped, nothing twice, order kept


def test_pack_closes_a_task_at_max_rows():
    shards = [shard(f"m{k}", 0, 1, 300) for k in range(5)]
    assert [len(t) for t in pack(shards, max_rows=1000)] == [3, 2]  # 900 + 300 would pass 1,000
    assert [len(t) for t in pack([shard("huge", 0, 1, 5000)], max_rows=1000)] == [1]  # over max_rows: alone
    assert pack([], max_rows=1000) == []
