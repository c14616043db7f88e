"""The ledger of consumed samples: offsets as ranges, epochs closed, what is left dealt to a new topology."""

from __future__ import annotations

from types import SimpleNamespace

from unimodal.data.ledger import SampleLedger, add_offset, covers, union


def ledger(shards: int = 3) -> SampleLedger:
    datasets = [
        SimpleNamespace(name="exact", shards=f"x-{{0..{shards - 1}}}.tar", resample=False),
        SimpleNamespace(name="drawn", shards="y-{0..1}.tar", resample=True),
    ]
    return SampleLedger(datasets)


def test_offsets_merge_into_ranges_in_any_order():
    ranges = []
    for x in [3, 0, 1, 5, 2, 2, 4, 9]:
        add_offset(ranges, x)
    assert ranges == [[0, 6], [9, 10]]
    assert covers(ranges, 5) and not covers(ranges, 6) and not covers(ranges, 8) and covers(ranges, 9)
    assert union([[0, 2], [5, 6]], [[1, 3], [6, 8], [10, 11]]) == [[0, 3], [5, 8], [10, 11]]


def test_an_epoch_closes_once_every_shard_is_read_to_its_end_and_consumed():
    book = ledger()
    addrs = [[0, 0, u, x] for u in range(3) for x in range(2)]
    book.add({"addrs": addrs[:-1], "ends": [[0, 0, u, 2] for u in range(3)]})
    assert set(book.open["exact"][0]) == {0, 1, 2} and book.next == {"exact": 1, "drawn": 0}
    book.add({"addrs": [addrs[-1], [1, 4, 1, 7]], "ends": [[0, 0, 2, 2]]})  # a shard end read twice: no matter
    assert book.open["exact"] == {} and book.closed["exact"] == {0}
    assert book.next["drawn"] == 5 and book.open["drawn"] == {}  # a resampled dataset: only its epoch is kept
    book.add({"addrs": [], "ends": [[0, 0, 1, 2]]})  # a late end of a closed epoch does not reopen it
    assert book.open["exact"] == {}


def test_what_the_open_epochs_left_is_dealt_round_robin_in_each_epochs_order():
    book = ledger(shards=4)
    # epoch 0: shard 0 whole, shard 1 in part (its end not yet read), 2 and 3 untouched; epoch 1: shard 3 begun
    book.add({"addrs": [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 1, 2], [0, 1, 3, 0]], "ends": [[0, 0, 0, 2]]})
    order = {0: [3, 1, 0, 2], 1: [0, 1, 2, 3]}.__getitem__
    shares = [book.left(0, order, slot, 2) for slot in range(2)]
    # left, in order: epoch 0's shards 3, 1, 2 (0 is done), then epoch 1's 0, 1, 2, 3; every other one each
    assert shares[0] == ({0: [(3, []), (2, [])], 1: [(1, []), (3, [[0, 1]])]}, 2)
    assert shares[1] == ({0: [(1, [[0, 1], [2, 3]])], 1: [(0, []), (2, [])]}, 2)
    assert book.left(1, order, 0, 2) == ({}, 0)  # resampled: nothing to deal, its stream starts where it was


def test_ledgers_of_several_ranks_merge_into_their_union_whatever_the_order():
    one, two = ledger(), ledger()
    one.add({"addrs": [[0, 0, 0, 0], [0, 0, 1, 0]], "ends": [[0, 0, 0, 1]]})
    two.add({"addrs": [[0, 0, 1, 1], [0, 0, 2, 0], [0, 1, 0, 3]], "ends": [[0, 0, 1, 2], [0, 0, 2, 1]]})
    merged = ledger().unite([one.state_dict(), two.state_dict()])
    assert merged["open"]["exact"] == {1: {0: {"took": [[3, 4]], "size": None}}}  # epoch 0 closed by the union
    assert merged["closed"]["exact"] == [0] and merged["next"]["exact"] == 2
    again = ledger().unite([merged, one.state_dict(), two.state_dict()])
    assert again == merged  # nothing counts twice
