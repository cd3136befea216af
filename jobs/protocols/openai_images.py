"""OpenAI's Images API on our contract: its request fields mapped to a /predictions body, our answers in its
shapes (https://platform.openai.com/docs/api-reference/images). Torch-free; the routes: jobs/routers/openai.py.

Mapped: ``prompt``; ``n`` -> ``num_images_per_prompt``; ``size`` "WxH" -> ``width``/``height`` ("auto": the
model's default); ``output_format``; ``response_format`` (``b64_json`` or ``url``); ``model`` (the served model,
else 404); ``user`` -> the job's metadata; ``partial_images`` -> previews while streaming. Accepted and ignored,
as documented: ``quality``, ``style``, ``moderation``, ``output_compression`` (the server's encoder settings
decide), ``background: auto|opaque``. Every field of our own request schema is accepted beside them (what SDK
clients send with ``extra_body``: ``seed``, ``negative_prompt``, ``num_inference_steps``, ``sampler``, ...).
Anything else is a 400 naming it, never ignored.
"""

from __future__ import annotations

import re
from typing import Any

from handler.contract.errors import InvalidRequest, ServingError
from handler.contract.fields import FIELD_NAMES

from ..errors import ModelNotFound

IGNORED = {  # field: the values accepted (None: any), none of which changes the image
    "quality": ("auto", "standard", "hd", "low", "medium", "high"),
    "style": ("vivid", "natural"),
    "moderation": ("auto", "low"),
    "output_compression": None,
    "background": ("auto", "opaque"),
}
OWN = {"prompt", "model", "n", "size", "response_format", "output_format", "user", "stream", "partial_images"}
OURS_NOT_HERE = ("stream", "response_format", "preview_every", "num_images_per_prompt")  # OpenAI's own say these
RESPONSE_FORMATS = ("b64_json", "url")
SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")
MAX_PARTIAL_IMAGES = 3


def generation_body(body: Any, model_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """An OpenAI generations (or edits) body -> (our /predictions payload, the protocol's own options:
    ``response_format``, ``stream``, ``partial_images``, ``user``).

    Raises:
        InvalidRequest: naming the field (404-typed ModelNotFound for an unknown ``model``).
    """
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    unknown = sorted(set(body) - OWN - set(IGNORED) - (set(FIELD_NAMES) - set(OURS_NOT_HERE)))
    if unknown:
        raise InvalidRequest(f"unknown parameter(s): {', '.join(unknown)}", field=unknown[0], value=unknown[0])
    for name, allowed in IGNORED.items():
        if name in body and allowed is not None and body[name] not in allowed:
            raise InvalidRequest(
                f"`{name}` must be one of {', '.join(allowed)} but is {body[name]!r}", field=name, value=body[name]
            )
    model = body.get("model")
    if model is not None and model != model_name:
        raise ModelNotFound(f"the model {model!r} does not exist; this server serves {model_name!r}", field="model",
                            value=model)  # fmt: skip
    payload = {name: value for name, value in body.items() if name in FIELD_NAMES and name not in OURS_NOT_HERE}
    if "n" in body and body["n"] is not None:
        payload["num_images_per_prompt"] = body["n"]
    size = body.get("size")
    if size not in (None, "auto"):
        if "width" in body or "height" in body:
            raise InvalidRequest("send `size` or `width`/`height`, not both", field="size", value=size)
        match = SIZE.match(size) if isinstance(size, str) else None
        if match is None:
            raise InvalidRequest(f"`size` must be 'WIDTHxHEIGHT' (e.g. '1024x1024') or 'auto' but is {size!r}",
                                 field="size", value=size)  # fmt: skip
        payload["width"], payload["height"] = int(match.group(1)), int(match.group(2))
    options = {
        "response_format": body.get("response_format") or "b64_json",
        "stream": body.get("stream") or False,
        "partial_images": body.get("partial_images") or 0,
        "user": body.get("user"),
    }
    if options["response_format"] not in RESPONSE_FORMATS:
        raise InvalidRequest(f"`response_format` must be b64_json or url but is {options['response_format']!r}",
                             field="response_format", value=options["response_format"])  # fmt: skip
    if not isinstance(options["stream"], bool):
        raise InvalidRequest("`stream` must be true or false", field="stream", value=options["stream"])
    partial = options["partial_images"]
    if isinstance(partial, bool) or not isinstance(partial, int) or not 0 <= partial <= MAX_PARTIAL_IMAGES:
        raise InvalidRequest(f"`partial_images` must be an integer in 0..{MAX_PARTIAL_IMAGES} but is {partial!r}",
                             field="partial_images", value=partial)  # fmt: skip
    if partial and not options["stream"]:
        raise InvalidRequest("`partial_images` needs `stream: true`", field="partial_images", value=partial)
    if options["user"] is not None and not isinstance(options["user"], str):
        raise InvalidRequest("`user` must be a string", field="user", value=options["user"])
    return payload, options


def preview_every(steps: int, partial_images: int) -> int:
    """A preview every this many steps gives ``partial_images`` of them before the last step."""
    return max(steps // (partial_images + 1), 1)


def error_body(exc: ServingError) -> dict[str, Any]:
    """OpenAI's error object: the same message and status as ours, ``param`` our field name."""
    kinds = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
             429: "rate_limit_error"}  # fmt: skip
    kind = kinds.get(exc.status, "invalid_request_error" if exc.status < 500 else "server_error")
    code = "model_not_found" if isinstance(exc, ModelNotFound) else re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__)
    return {"error": {"message": exc.message, "type": kind, "param": exc.field, "code": code.lower()}}
