"""Strict input without a server (issue 17): how request bodies are decoded, the bounds of
integers and of every amount of money a request schema takes, and which failures mean
PostgreSQL is unreachable. Over HTTP: tests/integration/test_strict_input.py."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import asyncpg
import msgspec
import msgspec.inspect as mi
import pytest
from litestar.routes import HTTPRoute

from exchange.app import create_app
from exchange.platform.db import database_unreachable
from exchange.platform.limits import MAX_JSON_INTEGER, IntegerOutOfRange, check_json_body
from exchange.platform.money import MAX_FEN, fen
from exchange.platform.settings import Settings
from exchange.platform.validation import decode_json


class Deposit(msgspec.Struct):
    amount_fen: Annotated[int, msgspec.Meta(ge=1, le=10**15)]
    final: bool = False
    rate: float = 0.0


@pytest.mark.parametrize("body", [b'{"amount_fen": "100"}', b'{"amount_fen": 100.0}',
                                  b'{"amount_fen": "1e2"}', b'{"amount_fen": 1e2}',
                                  b'{"amount_fen": true}', b'{"amount_fen": 100, "final": "true"}',
                                  b'{"amount_fen": 100, "final": 1}'])  # fmt: skip
def test_a_body_is_decoded_strictly(body):
    with pytest.raises(msgspec.ValidationError, match=r"Expected `(int|bool)`"):
        decode_json(body, Deposit)


def test_what_json_says_is_an_integer_or_a_number_still_decodes():
    assert decode_json(b'{"amount_fen": 100, "final": true, "rate": 2}', Deposit) == Deposit(
        100, True, 2.0
    )  # an integer where a float is asked for is a number all the same


@pytest.mark.parametrize(
    ("body", "byte", "at"),
    [
        (b'{"a": "\xff"}', 0xFF, 7),
        ('{"名": "数据'.encode() + b'\xe6\x95"}', 0xE6, 15),  # a character cut short
        (b'{"a": "\xed\xa0\x80"}', 0xED, 7),  # a surrogate, encoded
        (b'{"skipped": "\xc3(", "a": 1}', 0xC3, 13),  # in a field the target does not keep
    ],
)
def test_a_body_that_is_not_utf8_is_malformed_json_naming_the_byte(body, byte, at):
    for target in (Any, dict[str, int]):
        with pytest.raises(msgspec.DecodeError, match=f"not UTF-8 \\(byte 0x{byte:02x} at {at}\\)"):
            decode_json(body, target)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b'{"a": 9007199254740992}', "a"),
        (b'{"a": [1, {"b": -9007199254740992}]}', "a[1].b"),
        (b"[0, 100000000000000000000000000]", "[1]"),
        (b"12345678901234567890", "$"),
    ],
)
def test_an_integer_beyond_2_53_is_refused_wherever_it_is(body, path):
    with pytest.raises(IntegerOutOfRange) as caught:
        check_json_body(body)
    assert [e.path for e in caught.value.errors] == [path]
    assert (caught.value.status, caught.value.code) == (422, "integer_out_of_range")


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 9007199254740991, "b": -9007199254740991}',  # the bounds themselves
        b'{"uscc": "914403001922038216", "phone": "+8613800000000000"}',  # digits in text
        b'{"a": 1e300, "b": 12345678901234567890.5}',  # numbers, not integers
        b'{"a": 12345678901234567890',  # not JSON: the handler says so
    ],
)
def test_integers_within_2_53_digits_in_text_and_numbers_pass(body):
    assert MAX_JSON_INTEGER == 2**53 - 1
    check_json_body(body)


def test_no_amount_may_be_bounded_beyond_2_53_fen():
    assert fen() == msgspec.Meta(ge=0, le=MAX_FEN)
    for bounds in ({"le": MAX_FEN + 1}, {"ge": -1}, {"ge": 5, "le": 4}):
        with pytest.raises(ValueError, match="bounds"):
            fen(**bounds)


def _money_fields(info: mi.Type, path: str, seen: set[int]) -> list[tuple[str, mi.Type]]:
    if isinstance(info, mi.StructType):
        if id(info.cls) in seen:
            return []
        seen = seen | {id(info.cls)}
        return [
            found
            for field in info.fields
            for found in (
                [(f"{path}.{field.encode_name}", field.type)]
                if field.encode_name.endswith(("_fen", "_millifen"))
                else _money_fields(field.type, f"{path}.{field.encode_name}", seen)
            )
        ]
    if isinstance(info, mi.UnionType):
        return [f for t in info.types for f in _money_fields(t, path, seen)]
    if isinstance(info, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        return _money_fields(info.item_type, f"{path}[]", seen)
    if isinstance(info, mi.DictType):
        return _money_fields(info.value_type, f"{path}{{}}", seen)
    return []


def test_every_amount_a_request_body_takes_is_an_integer_within_2_53_fen():
    app = create_app(Settings())
    fields: dict[str, mi.Type] = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            data = handler.parsed_fn_signature.parameters.get("data")
            if data is not None:
                name = getattr(data.annotation, "__name__", repr(data.annotation))
                fields |= dict(_money_fields(mi.type_info(data.annotation), name, set()))
    assert {"ExternalMovementIn.amount_fen", "TopUpIn.amount_fen", "OrderCreate.spend_cap_fen",
            "ProductMetadata.plans[].price_fen", "FeeScheduleIn.min_fen",
            "ProductMetadata.plans[].dimensions[].unit_price_millifen"} <= set(fields)  # fmt: skip
    for path, info in fields.items():
        kinds = info.types if isinstance(info, mi.UnionType) else (info,)
        ints = [k for k in kinds if not isinstance(k, mi.NoneType)]
        assert all(isinstance(k, mi.IntType) for k in ints), f"{path} is not an integer"
        for k in ints:
            assert isinstance(k, mi.IntType)
            assert k.ge is not None and k.ge >= 0, f"{path} may be negative"
            assert k.le is not None and k.le <= MAX_FEN, f"{path} may exceed 2^53 - 1"


async def test_postgres_unreachable_is_told_apart_from_the_apis_own_failures(tmp_path):
    # A real connection attempt to a socket nobody listens on: the OSError comes from asyncpg.
    with pytest.raises(OSError) as refused:
        await asyncpg.connect(f"postgresql://postgres@/dataex?host={tmp_path}", timeout=5)
    assert database_unreachable(refused.value)
    # The same kind of error from the API's own I/O (a file, a peer) is not PostgreSQL's.
    with pytest.raises(OSError) as own:
        (tmp_path / "missing").read_bytes()
    assert not database_unreachable(own.value)
    with pytest.raises(TimeoutError) as slow:
        await asyncio.wait_for(asyncio.sleep(1), 0.001)
    assert not database_unreachable(slow.value)
    for error in (
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.InterfaceError("connection is closed"),
    ):
        assert database_unreachable(error), error
    assert not database_unreachable(asyncpg.InterfaceError("another operation is in progress"))
    assert not database_unreachable(asyncpg.exceptions.UniqueViolationError("duplicate key"))
