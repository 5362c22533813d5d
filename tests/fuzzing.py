"""Hypothesis strategies shared by the tests that feed damaged files to maskcheck's readers."""

from __future__ import annotations

from hypothesis import strategies as st


def damaged(base: bytes) -> st.SearchStrategy[bytes]:
    """A good file cut short, with a few bytes overwritten, or plain noise."""
    cut = st.integers(0, len(base) - 1).map(lambda n: base[:n])
    flips = st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), min_size=1, max_size=6)

    def flip(changes: list[tuple[int, int]]) -> bytes:
        b = bytearray(base)
        for i, v in changes:
            b[i] = v
        return bytes(b)

    return st.one_of(cut, flips.map(flip), st.binary(max_size=64))
