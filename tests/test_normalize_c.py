"""The C library's normalisation (sd_normalize) against DirtySet's Python one.

``normalize()`` hands ``array('Q')`` input to the C library first; it must
give exactly the Python path's answer whenever it answers, answer for every
input without overlaps or bad ranges (sorting a few sorted runs), and leave
overlapping or bad input to the Python path (which cuts overlaps or raises).
"""

from __future__ import annotations

import os
import random
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softdirty import dirtyset, scanner
from softdirty.errors import Unsupported

P = 4096


def python_normalize(triples: list[int]) -> list[int]:
    return list(dirtyset.normalize(list(triples)))  # a list never takes the C path


@pytest.fixture(scope="module")
def c() -> scanner.CScanner:
    try:
        impl = scanner.implementation("c")
    except Unsupported as exc:
        if os.environ.get("SOFTDIRTY_ALLOW_NO_C") == "1":
            pytest.skip(f"C scanner unavailable and SOFTDIRTY_ALLOW_NO_C=1: {exc.reason}")
        pytest.fail(f"C scanner unavailable: {exc.reason} (python -m softdirty._build)", pytrace=False)
    assert isinstance(impl, scanner.CScanner)
    return impl


def overlaps_or_bad(triples: list[int]) -> bool:
    rs = sorted((triples[i], triples[i + 1]) for i in range(0, len(triples), 3))
    if any(s >= e or s % P or e % P for s, e in rs):
        return True
    return any(rs[i][0] < rs[i - 1][1] for i in range(1, len(rs)))


any_ranges = st.lists(
    st.tuples(st.integers(0, 64), st.integers(0, 8), st.sampled_from([1, 2, 4, 3, 32]), st.booleans()),
    max_size=30,
).map(lambda rs: [x for s, n, f, bad in rs for x in (s * P + (8 if bad and n == 3 else 0), (s + n) * P, f)])


@given(any_ranges)
def test_c_agrees_with_python_or_declines(c: scanner.CScanner, triples: list[int]) -> None:
    got = c.normalize_disjoint(array("Q", triples))
    if overlaps_or_bad(triples):
        assert got is None
    else:
        assert got is not None
        assert list(got) == python_normalize(triples)


@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3), st.sampled_from([1, 2])), max_size=60),
       st.integers(1, 6), st.randoms(use_true_random=False))
def test_disjoint_runs_in_any_order(c: scanner.CScanner, gaps: list[tuple[int, int, int]], pieces: int,
                                    rnd: random.Random) -> None:
    """Disjoint ranges cut into a few sorted runs and shuffled (as a harvest appends them): sorted back."""
    flat: list[list[int]] = []
    pos = 0
    for gap, n, f in gaps:
        pos += gap * P
        flat.append([pos, pos + n * P, f])
        pos += n * P
    cuts = sorted(rnd.sample(range(len(flat) + 1), min(pieces, len(flat) + 1)))
    runs = [flat[a:b] for a, b in zip([0, *cuts], [*cuts, len(flat)], strict=False)]
    rnd.shuffle(runs)
    triples = [x for run in runs for t in run for x in t]
    got = c.normalize_disjoint(array("Q", triples))
    assert got is not None
    assert list(got) == python_normalize(triples)


def test_touching_equal_flags_merge_and_input_is_left_alone(c: scanner.CScanner) -> None:
    src = array("Q", [5 * P, 6 * P, 1, 0, P, 1, P, 2 * P, 1, 2 * P, 3 * P, 2])
    before = array("Q", src)
    got = c.normalize_disjoint(src)
    assert got is not None and list(got) == [0, 2 * P, 1, 2 * P, 3 * P, 2, 5 * P, 6 * P, 1]
    assert src == before


def test_normalize_takes_the_c_path_for_arrays_and_keeps_its_errors() -> None:
    triples = array("Q", [3 * P, 4 * P, 1, 0, P, 1])
    assert list(dirtyset.normalize(triples)) == [0, P, 1, 3 * P, 4 * P, 1]
    # Overlaps: the C path declines, the Python sweep ORs the flags.
    assert list(dirtyset.normalize(array("Q", [0, 2 * P, 1, P, 3 * P, 2]))) == [0, P, 1, P, 2 * P, 3, 2 * P, 3 * P, 2]
    for bad in ([2 * P, P, 1], [P + 1, 2 * P, 1], [P, P, 1]):
        with pytest.raises(ValueError):
            dirtyset.normalize(array("Q", bad))
