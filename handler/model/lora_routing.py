"""Per-row LoRA: requests with different LoRAs (and scales) share one UNet forward.

The catalogue's adapters are loaded with diffusers' ``load_lora_weights`` (PEFT layers) and then DISABLED, so
PEFT's own forward computes the base layer only. A forward hook on every PEFT LoRA ``Linear`` then adds, for
each adapter a row asks for, ``scale x lora_B(lora_A(x[rows]))`` times the adapter's own ``alpha / r``: the
delta PEFT would add with ``set_adapters([name], [scale])``, for those rows alone. PEFT's LoRA ``Conv2d`` (LoCon:
ResNet convolutions) adds the same expression, so it is routed the same way; DoRA is not (its magnitude
rescales the whole output): the catalogue applies DoRA adapters to whole forwards instead. Rows asking for nothing get
the base output; a row may ask for several adapters (their deltas add, as PEFT's do).

Outside :meth:`LoraRouter.route` the hooks add nothing, so the shared pipeline is the base model whatever
happened in a routed forward (the context clears the routing in ``finally``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


def routable_layer_types() -> tuple[type, ...]:
    """PEFT LoRA layers whose (non-DoRA) delta is ``lora_B(lora_A(dropout(x))) * scaling``."""
    from peft.tuners.lora.layer import Conv2d, Linear

    return (Linear, Conv2d)


@dataclass(frozen=True)
class Route:
    """One adapter's rows in a forward: their indices (None: every row) and each row's scale."""

    adapter: str
    rows: torch.Tensor | None  # (n,) long
    scales: torch.Tensor | float  # (n,) or one scale for every row


class LoraRouter:
    """Adds per-row LoRA deltas to the PEFT LoRA Linear and Conv2d layers of the models it is attached to."""

    def __init__(self) -> None:
        self.routes: list[Route] = []
        self.hooked: set[int] = set()

    def attach(self, *models: Any) -> int:
        """Hook every routable PEFT LoRA layer of ``models`` not hooked yet (call after each adapter load: a new
        adapter may target new layers). Returns the layers hooked now."""
        added = 0
        for model in models:
            for module in model.modules() if model is not None else ():
                if isinstance(module, routable_layer_types()) and id(module) not in self.hooked:
                    module.register_forward_hook(self._add_deltas)
                    self.hooked.add(id(module))
                    added += 1
        return added

    @contextmanager
    def route(self, routes: list[Route]) -> Iterator[None]:
        self.routes = routes
        try:
            yield
        finally:
            self.routes = []

    def _add_deltas(self, module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if not self.routes:
            return output
        x = args[0]
        for route in self.routes:
            if route.adapter not in module.lora_A:
                continue
            lora_a, lora_b = module.lora_A[route.adapter], module.lora_B[route.adapter]
            dropout, scaling = module.lora_dropout[route.adapter], module.scaling[route.adapter]
            inputs = x if route.rows is None else x[route.rows]
            delta = lora_b(lora_a(dropout(inputs.to(lora_a.weight.dtype)))) * scaling
            if route.rows is None:
                output = output + (delta * route.scales).to(output.dtype)
            else:
                scales = route.scales.to(delta.dtype).view(-1, *([1] * (delta.dim() - 1)))
                output = output.index_add(0, route.rows, (delta * scales).to(output.dtype))
        return output
