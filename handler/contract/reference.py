"""The field table rendered: the Markdown request table of docs/requests.md
(``python -m handler.contract.reference [model.yaml]``) and the JSON Schema of a request (the job gateway's
OpenAPI document)."""

from __future__ import annotations

import sys

from handler.contract.fields import describe_fields
from handler.contract.request import Defaults, Limits

_ITEM_TYPES = {
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
    "[height, width]": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
    "[top, left]": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
    "list of {name, scale}": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "scale": {"type": "number"}},
            "required": ["name"],
            "additionalProperties": False,
        },
    },
}


def json_schema(limits: Limits = Limits(), defaults: Defaults = Defaults(), leave_out: tuple[str, ...] = ()) -> dict:
    """The request as a JSON Schema (the job gateway's OpenAPI document shows it), from the same table; the
    parser stays the judge of bounds, which each property's description states."""
    properties = {}
    for field in describe_fields(limits, defaults):
        if field.name in leave_out:
            continue
        base, _, nullable = field.type.partition(" or ")
        schema = dict(_ITEM_TYPES[base])
        if base == "string" and " / " in field.bounds and "," not in field.bounds:
            schema["enum"] = field.bounds.split(" / ")
        if nullable:
            schema = {"anyOf": [schema, {"type": "null"}]}
        bounds = f" Bounds: {field.bounds}." if field.bounds else ""
        schema["description"] = f"{field.description}{bounds} Default: {field.default}."
        properties[field.name] = schema
    return {"type": "object", "properties": properties, "required": ["prompt"], "additionalProperties": False}


def markdown_table(limits: Limits = Limits(), defaults: Defaults = Defaults()) -> str:
    """The request reference as a Markdown table (the README embeds the built-in one)."""
    rows = ["| field | type | default | bounds | meaning |", "|---|---|---|---|---|"]
    rows += [
        f"| `{f.name}` | {f.type} | {f.default} | {f.bounds} | {f.description} |"
        for f in describe_fields(limits, defaults)
    ]
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    """Print the request reference; with a model yaml path, with that yaml's defaults and bounds."""
    if not argv:
        print(markdown_table())
        return
    import yaml

    from handler.contract.settings import HandlerSettings

    with open(argv[0]) as handle:
        settings = HandlerSettings.from_yaml(yaml.safe_load(handle))
    print(markdown_table(settings.limits, settings.defaults))


if __name__ == "__main__":
    main(sys.argv[1:])
