"""The field table rendered: the Markdown request table of docs/requests.md
(``python -m handler.contract.reference [model.yaml]``) and the JSON Schema of a request (the job gateway's
OpenAPI document)."""

from __future__ import annotations

import sys

from handler.contract.fields import FIELDS, describe_fields
from handler.contract.request import Defaults, Limits


def json_schema(limits: Limits = Limits(), defaults: Defaults = Defaults(), leave_out: tuple[str, ...] = ()) -> dict:
    """The request as a JSON Schema (the job gateway's OpenAPI document shows it), each property from its
    field's kind, with this yaml's bounds and defaults."""
    properties = {}
    for f in FIELDS:
        if f.name in leave_out:
            continue
        schema = f.kind.schema(limits)
        if f.nullable:
            schema = {"anyOf": [schema, {"type": "null"}]}
        bounds = f.kind.bounds(limits)
        bounds = f" Bounds: {bounds}." if bounds else ""
        schema["description"] = f"{f.describe(limits)}{bounds} Default: {f.default_doc(defaults)}."
        properties[f.name] = schema
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
