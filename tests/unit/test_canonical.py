"""The fast canonical JSON path is byte-identical to the rfc8785 package wherever it is used."""

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.platform.canonical import _plain, canonical_json, canonical_lines

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=500)
@given(json_values)
def test_canonical_json_equals_rfc8785(value):
    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        return  # out of RFC 8785's domain (a huge integer): both refuse
    assert canonical_json(value) == expected


def test_the_fast_path_is_taken_only_where_it_is_exact():
    assert _plain({"a": [1, "中文", None, True, {"b": -(2**53) + 1}]})
    assert not _plain({"a": 1.5})
    assert not _plain([2**53])
    assert not _plain({"\U0001f600": 1})
    assert canonical_json({"b": "\b\t\n\f\r\x00\x1f\x7f\u2028", "a": "/é"}) == rfc8785.dumps(
        {"b": "\b\t\n\f\r\x00\x1f\x7f\u2028", "a": "/é"}
    )


@settings(max_examples=200)
@given(st.lists(json_values, max_size=5))
def test_canonical_lines_are_each_documents_rfc8785_bytes(values):
    try:
        expected = b"".join(rfc8785.dumps(v) + b"\n" for v in values)
    except rfc8785.CanonicalizationError:
        return
    assert canonical_lines(values) == expected
