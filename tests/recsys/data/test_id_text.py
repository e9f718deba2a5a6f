"""Ids as text: a long column is converted once per distinct id, with the same result."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.data.readers import ID_TEXT_DISTINCT_FROM, _id_text, id_text

ids = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.sampled_from([1.0, -0.0, 0.0, float("nan"), True, False]),
    st.sampled_from(["a", " a\t", "1", "", " ", "é"]),
)


def _column(values: list[object], dtype: object) -> pd.Series:
    repeated = (values * (ID_TEXT_DISTINCT_FROM // max(len(values), 1) + 1))[
        : ID_TEXT_DISTINCT_FROM + 7
    ]
    return pd.Series(repeated, dtype=dtype, index=np.arange(len(repeated)) * 3)


@settings(max_examples=60, deadline=None)
@given(st.lists(ids, min_size=1, max_size=12))
def test_id_text_matches_the_value_by_value_conversion(values: list[object]) -> None:
    column = _column(values, object)
    fast, plain = id_text(column), _id_text(column)
    assert fast.tolist() == plain.tolist()
    assert fast.index.equals(plain.index) and fast.dtype == plain.dtype


@given(st.lists(st.integers(0, 10**12), min_size=1, max_size=12))
def test_id_text_of_typed_integer_columns(values: list[int]) -> None:
    column = _column(values, np.int64)
    assert id_text(column).tolist() == [str(v) for v in column]
