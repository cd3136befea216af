"""Triton's tensors to the core's rows and the core's replies back to tensors, without Triton (testable anywhere).

A Triton request carries the design document's inputs, ``prompt`` (TYPE_STRING) and optional ``steps``
(TYPE_INT32, = ``num_inference_steps``), plus an optional ``parameters`` input: one JSON object with any other
field of the request schema (:mod:`handler.contract.fields`, the same one TorchServe serves). Its response has
``image`` (uint8, [H, W, 3]), ``image_bytes`` (the encoded image), ``seed`` (int64), ``effective_parameters`` (the
effective parameters, JSON) and ``batch`` (the handler's accounting, JSON). A failed request gets its own
error, whose message is the JSON error document (``code``, ``type``, ``message``, ``field``, ``value``).
The Triton adapter (``triton/model.py``) only moves tensors in and out through this module.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from handler.contract.decode import parse_json_text
from handler.contract.errors import InvalidRequest, error_document
from handler.wire.replies import Reply

OUTPUTS = ("image", "image_bytes", "seed", "effective_parameters", "batch")
# What Triton can express of our statuses (its HTTP status follows the code: INVALID_ARG is 400).
TRITON_CODES = {400: "INVALID_ARG", 503: "UNAVAILABLE", 504: "UNAVAILABLE", 507: "UNAVAILABLE"}


@dataclass(frozen=True)
class TritonFailure:
    """A request's error for Triton: its error code name and a JSON message (the error document)."""

    code: str
    message: str


def scalar(array: Any) -> Any:
    """The one value of an optional input tensor ([1] or [1, 1]), or None when it is absent."""
    if array is None:
        return None
    values = np.asarray(array).reshape(-1)
    if values.size != 1:
        raise InvalidRequest(f"each input must hold one value per request but one holds {values.size}")
    value = values[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"a TYPE_STRING input is not valid UTF-8 at byte {exc.start}") from None
    return value.item() if hasattr(value, "item") else value


def request_row(prompt: Any, steps: Any = None, parameters: Any = None) -> dict[str, bytes]:
    """A Triton request's input tensors -> the core's row (one JSON body).

    Raises:
        InvalidRequest: ``parameters`` is not one JSON object, repeats ``prompt``/``num_inference_steps``, or
            asks for what one Triton response cannot carry (a stream, a raw image, several images).
    """
    text = scalar(parameters)
    body = {} if text is None else parse_json_text(text)
    if not isinstance(body, dict):
        raise InvalidRequest("the `parameters` input must be one JSON object", field="parameters")
    for name, value in (("prompt", scalar(prompt)), ("num_inference_steps", scalar(steps))):
        if value is None:
            continue
        if name in body:
            raise InvalidRequest(f"`{name}` is given as an input and in `parameters`; send it once", field=name)
        body[name] = value
    for name, allowed in (("stream", False), ("response_format", "json"), ("num_images_per_prompt", 1)):
        if name in body and body[name] != allowed:
            raise InvalidRequest(
                f"`{name}` must be {json.dumps(allowed)} on Triton (one response, one image) but is "
                f"{json.dumps(body[name])}",
                field=name,
                value=body[name],
            )
    return {"body": json.dumps(body).encode()}


def reply_outputs(reply: Reply) -> dict[str, np.ndarray] | TritonFailure:
    """One reply -> the named output arrays (with Triton's batch dimension of 1), or its failure."""
    if reply.error is not None:
        document = reply.json()["error"]
        return TritonFailure(TRITON_CODES.get(reply.code, "INTERNAL"), json.dumps(document))
    document = reply.json()
    encoded = base64.b64decode(document["images"][0])
    if reply.images is None:
        raise ValueError("Triton's core must keep the decoded images: build_core(..., keep_images=True)")
    pixels = np.asarray(reply.images[0].convert("RGB"), dtype=np.uint8)
    return {
        "image": pixels[None],
        "image_bytes": np.array([[encoded]], dtype=object),
        "seed": np.array([[document["seeds"][0]]], dtype=np.int64),
        "effective_parameters": np.array([[json.dumps(document["parameters"]).encode()]], dtype=object),
        "batch": np.array([[json.dumps(document["batch"]).encode()]], dtype=object),
    }


def failure(exc: BaseException) -> TritonFailure:
    """A request refused before the core saw it (its inputs did not make a row)."""
    document = error_document(exc)
    return TritonFailure(TRITON_CODES.get(document["code"], "INTERNAL"), json.dumps(document))


def serve(core: Any, inputs: list[dict[str, Any]]) -> list[dict[str, np.ndarray] | TritonFailure]:
    """Run one ``execute``'s requests (their input arrays by name) through the core as one static batch."""
    rows: dict[int, dict[str, bytes]] = {}
    results: list[dict[str, np.ndarray] | TritonFailure | None] = [None] * len(inputs)
    for index, tensors in enumerate(inputs):
        try:
            rows[index] = request_row(tensors.get("prompt"), tensors.get("steps"), tensors.get("parameters"))
        except Exception as exc:
            results[index] = failure(exc)
    if rows:
        replies = core.handle(list(rows.values()))
        for index, reply in zip(rows, replies, strict=True):
            results[index] = reply_outputs(reply)
    return results  # type: ignore[return-value]
