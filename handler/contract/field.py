"""One request field's entry in the field table (:mod:`handler.contract.fields`) and how the docs show it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from handler.contract.kinds import Kind

REQUIRED = object()  # the default of a field every request must send


@dataclass(frozen=True)
class Field:
    """One request field.

    Args:
        name (`str`): the JSON key (diffusers' argument name where diffusers has one).
        kind (`Kind`): what its value may be (:mod:`handler.contract.kinds`).
        description (`str` or callable of `Limits`): what it does, for the docs, the schema and ``--help``.
        group (`str`): where the docs list it.
        default (defaults to None): used when the request leaves it out; ``REQUIRED`` for ``prompt``.
        configurable (`bool`, defaults to False): the yaml's ``handler.defaults`` may set the default.
        when_null (`str`, defaults to "null"): what a null default means, for the docs.
        needs (`str`, defaults to None): another field it applies only with; sent without it, a 400.
    """

    name: str
    kind: Kind
    description: str | Callable[[Any], str]
    group: str
    default: Any = None
    configurable: bool = False
    when_null: str = "null"
    needs: str | None = None

    @property
    def nullable(self) -> bool:
        """A null value is accepted: it means the field is not given (an echo of a reply may carry nulls)."""
        return self.kind.nullable or self.needs is not None

    @property
    def annotation(self) -> str:
        return self.kind.annotation + (" | None" if self.nullable else "")

    def describe(self, limits: Any) -> str:
        text = self.description(limits) if callable(self.description) else self.description
        return f"With `{self.needs}`: {text}" if self.needs else text

    def type_doc(self) -> str:
        return self.kind.type_doc + (" or null" if self.kind.nullable else "")

    def default_doc(self, defaults: Any) -> str:
        value = getattr(defaults, self.name) if self.configurable else self.default
        if value is REQUIRED:
            return "required"
        return self.when_null if value is None else json.dumps(list(value) if isinstance(value, tuple) else value)


@dataclass(frozen=True)
class FieldDoc:
    """One field as the docs show it, with a model yaml's defaults and bounds."""

    name: str
    type: str
    description: str
    default: str
    bounds: str
    needs: str | None
