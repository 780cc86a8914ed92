"""DirtySet: sorting, coalescing, unions, membership, per-VMA summaries."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from softdirty.dirtyset import Cause, DirtySet, normalize
from softdirty.maps import Vma

P = 4096


def pages_of(triples: list[int]) -> dict[int, int]:
    """Naive model: page -> OR of flags."""
    out: dict[int, int] = {}
    for i in range(0, len(triples), 3):
        for a in range(triples[i], triples[i + 1], P):
            out[a] = out.get(a, 0) | triples[i + 2]
    return out


ranges = st.lists(
    st.tuples(st.integers(0, 64), st.integers(1, 8), st.sampled_from([1, 2, 4, 3])), max_size=20
).map(lambda rs: [x for s, n, f in rs for x in (s * P, (s + n) * P, f)])


@given(ranges)
def test_normalize_matches_the_page_model(triples: list[int]) -> None:
    out = list(normalize(triples))
    assert pages_of(out) == pages_of(triples)
    # sorted, disjoint, and adjacent ranges differ in flags
    for i in range(3, len(out), 3):
        assert out[i] >= out[i - 2]
        if out[i] == out[i - 2]:
            assert out[i + 2] != out[i - 1]


@given(ranges, ranges)
def test_union_is_the_or_of_both(a: list[int], b: list[int]) -> None:
    u = DirtySet(a).union(DirtySet(b))
    model = pages_of(a)
    for page, f in pages_of(b).items():
        model[page] = model.get(page, 0) | f
    assert pages_of(list(u.triples)) == model
    assert u.page_count == len(model)


def test_membership_counts_and_vmas() -> None:
    vma = Vma(0x10000, 0x20000, "rw-p")
    other = Vma(0x30000, 0x31000, "rw-p")
    ds = DirtySet([0x11000, 0x13000, int(Cause.WRITTEN), 0x1F000, 0x21000, int(Cause.NEW_MAPPING)], [vma, other])
    assert 0x11000 in ds and 0x12FFF in ds and 0x13000 not in ds and 0x10FFF not in ds
    assert "x" not in ds and True not in ds
    assert ds.page_count == 4 and ds.bytes == 4 * P
    assert ds.flags_at(0x20000) == Cause.NEW_MAPPING and ds.flags_at(0) == 0
    assert ds.pages_in(0x12000, 0x20000) == 2
    assert ds.count(Cause.WRITTEN) == 2
    summaries = {s.vma.start: (s.pages, s.ranges) for s in ds.vmas}
    assert summaries == {0x10000: (3, 2), 0x30000: (0, 0)}
    assert [r.pages for r in ds] == [2, 2]
    d = ds.to_dict()
    assert d["pages"] == 4 and d["ranges"][1][2] == ["NEW_MAPPING"]


def test_bad_ranges_are_errors() -> None:
    import pytest

    for bad in ([0x2000, 0x1000, 1], [0x1001, 0x2000, 1], [0x1000, 0x2000]):
        with pytest.raises(ValueError):
            normalize(bad)
