"""Every error in a request body at once, not only the first one msgspec stops at; and the one
way request bodies are decoded."""

from __future__ import annotations

import functools
import types
import typing
from typing import Any

import msgspec

from exchange.platform.errors import FieldError

_PATH_SUFFIX = " - at `$"


@functools.cache
def _decoder(target: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(target)  # strict: "100", "1e2" and 100.0 are not integers


def decode_json(body: bytes, target: Any = Any) -> Any:
    """``body`` decoded as JSON into ``target``, strictly: no string or float becomes an integer
    (or a boolean) on the way.

    JSON is UTF-8 (RFC 8259). msgspec decodes only the strings it keeps, and for bytes that
    are not UTF-8 in one of them raises `UnicodeDecodeError`, which is no `msgspec.DecodeError`:
    every caller would answer 500, and the same bytes in a field it skips would pass. So the
    whole body is checked first (at no cost for ASCII), and bytes that are not UTF-8 are a
    `msgspec.DecodeError` like any other malformed JSON, naming the first of them.
    """
    if not body.isascii():
        try:
            body.decode()
        except UnicodeDecodeError as error:
            raise msgspec.DecodeError(
                f"JSON is malformed: not UTF-8 (byte 0x{body[error.start]:02x} at {error.start})"
            ) from None
    return _decoder(target).decode(body)


def _struct_in(annotation: Any) -> type[msgspec.Struct] | None:
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _struct_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _struct_in(arg)
            if found is not None:
                return found
    return None


def _list_item(annotation: Any) -> Any | None:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _list_item(typing.get_args(annotation)[0])
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(annotation)
        return args[0] if args else None
    return None


def _join(path: str, suffix: str) -> str:
    if not suffix:
        return path
    if suffix.startswith("["):
        return f"{path}{suffix}"
    return f"{path}.{suffix}" if path else suffix


def _message(error: msgspec.ValidationError, path: str) -> FieldError:
    text = str(error)
    where = text.find(_PATH_SUFFIX)
    if where >= 0:
        inner = text[where + len(_PATH_SUFFIX) : -1].lstrip(".")
        return FieldError(path=_join(path, inner), message=text[:where], source="body")
    return FieldError(path=path or "$", message=text, source="body")


def collect_errors(target: Any, value: Any, path: str = "") -> list[FieldError]:
    """All validation errors of ``value`` against ``target`` (a msgspec type), with their paths."""
    struct = _struct_in(target)
    if struct is not None and isinstance(value, dict):
        errors: list[FieldError] = []
        info = msgspec.structs.fields(struct)
        known = {field.encode_name for field in info}
        if struct.__struct_config__.forbid_unknown_fields:
            errors.extend(
                FieldError(path=_join(path, str(key)), message="unknown field", source="body")
                for key in value
                if key not in known
            )
        hints = typing.get_type_hints(struct, include_extras=True)
        for field in info:
            if field.encode_name not in value:
                if field.required:
                    errors.append(
                        FieldError(
                            path=_join(path, field.encode_name),
                            message="required field missing",
                            source="body",
                        )
                    )
                continue
            errors.extend(
                collect_errors(
                    hints[field.name], value[field.encode_name], _join(path, field.encode_name)
                )
            )
        return errors
    item = _list_item(target)
    if item is not None and isinstance(value, list):
        try:
            msgspec.convert(value, target)
        except msgspec.ValidationError as error:
            nested = [
                e
                for index, element in enumerate(value)
                for e in collect_errors(item, element, f"{path}[{index}]")
            ]
            return nested or [_message(error, path)]
        return []
    try:
        msgspec.convert(value, target)
    except msgspec.ValidationError as error:
        return [_message(error, path)]
    return []
