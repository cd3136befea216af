"""Turn one TorchServe row into one JSON object, or raise InvalidRequest saying what was wrong.

TorchServe hands a row's body over as a dict (application/json, decoded by TorchServe), a str (text/*) or
bytes (anything else, invalid JSON, or every body when ``TS_DECODE_INPUT_REQUEST=false``, which our server
script sets so that this module does the strict decoding: no duplicate keys, no NaN/Infinity).
"""

from __future__ import annotations

import json
from typing import Any

from handler.contract.errors import InvalidRequest
from handler.contract.fields import IMAGE_CONTENT_TYPES

# TorchServe's name for a raw body; "data" is what its form decoder and older clients use.
BODY_KEYS = ("body", "data")


def _reject_constant(name: str) -> Any:
    raise InvalidRequest(f"request body is not valid JSON: `{name}` is not a JSON number")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidRequest(f"request body has the key `{key}` more than once", field=key, value=key)
        result[key] = value
    return result


def parse_json_text(text: str) -> Any:
    """Strict JSON: rejects NaN/Infinity, duplicate keys and text that is not Unicode (a lone surrogate such as
    ``"\\ud800"``, which no UTF-8 encoder can write: Redis, logs and replies would fail on it later), and reports
    where it broke."""
    try:
        value = json.loads(text, object_pairs_hook=_object_without_duplicates, parse_constant=_reject_constant)
        if "\\u" in text or not text.isascii():  # surrogates come only from \u escapes or a str that has them
            _check_unicode(value, "")
        return value
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise InvalidRequest("request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal beyond Python's 4300-digit conversion limit
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def _check_unicode(value: Any, path: str) -> None:
    """Raise InvalidRequest naming the first string (or key) at ``path`` that cannot be encoded as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            name = path or "request body"
            raise InvalidRequest(
                f"`{name}` is not valid Unicode text: the lone surrogate \\u{ord(value[exc.start]):04x} at character "
                f"{exc.start} cannot be encoded as UTF-8",
                field=name,
                value=value.encode("utf-8", "backslashreplace").decode("ascii"),
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(key, f"{path}.<key>" if path else "<key>")
            _check_unicode(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_unicode(item, f"{path}[{index}]")


def decode_row(row: Any) -> Any:
    """Return the JSON value a row carries (schema checks that it is an object)."""
    if not isinstance(row, dict):
        raise InvalidRequest(f"unexpected request row of type {type(row).__name__}")
    value = next((row[key] for key in BODY_KEYS if row.get(key) is not None), None)
    if value is None:
        raise InvalidRequest(
            "request body is empty; send one JSON object with the header `Content-Type: application/json` "
            "(curl -d without it sends a form, which TorchServe swallows)"
        )
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(
                f"request body is not valid UTF-8: byte 0x{value[exc.start]:02x} at position {exc.start}"
            ) from None
    if isinstance(value, str):
        if not value.strip():
            raise InvalidRequest('request body is empty; send one JSON object such as {"prompt": "a cat"}')
        return parse_json_text(value)
    return value


def negotiate(payload: Any, accept: str | None) -> Any:
    """Apply an ``Accept`` header to a body: ``image/png|jpeg|webp`` asks for that raw image, ``image/*`` for
    a raw image in the body's ``output_format``. Conflicts with the body are errors, not guesses."""
    if not accept or not isinstance(payload, dict):
        return payload
    wanted = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    formats = {content_type: name for name, content_type in IMAGE_CONTENT_TYPES.items()}
    chosen = next((formats[w] for w in wanted if w in formats), None)
    if chosen is None and "image/*" not in wanted:
        return payload
    if payload.get("response_format", "image") != "image":
        raise InvalidRequest(
            f"`Accept: {accept}` asks for an image but `response_format` is {payload['response_format']!r}",
            field="response_format",
            value=payload["response_format"],
        )
    if chosen and payload.get("output_format", chosen) != chosen:
        raise InvalidRequest(
            f"`Accept: {accept}` asks for {chosen} but `output_format` is {payload['output_format']!r}",
            field="output_format",
            value=payload["output_format"],
        )
    negotiated = {**payload, "response_format": "image"}
    if chosen:
        negotiated["output_format"] = chosen
    return negotiated
