"""Group the requests of one TorchServe batch into pipeline calls.

Requests share UNet forwards when their latents have the same shape (width and height). Everything else
(prompts, seeds, step counts, guidance, routed LoRAs) is per request in :mod:`handler.model.denoise`, so any mix of
those can be grouped. What a ``partition`` adds must match too: the UNet of a request's current stage (base
or refiner, :mod:`handler.model.refiner`), and a LoRA set that per-row routing cannot apply (DoRA, :mod:`handler.
lora_catalogue`), which PEFT applies to a whole forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from handler.contract.request import GenerationRequest


@dataclass(frozen=True)
class GroupKey:
    width: int
    height: int
    partition: tuple = ()  # what else must match: the stage's UNet, a whole-forward LoRA set

    @classmethod
    def of(cls, request: GenerationRequest, partition: tuple = ()) -> GroupKey:
        return cls(request.width, request.height, partition)


@dataclass
class Group:
    """Requests (with their row positions) that share each step's UNet forward."""

    key: GroupKey
    rows: list[int] = field(default_factory=list)
    requests: list[GenerationRequest] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(r.num_images_per_prompt for r in self.requests)


def group_requests(
    requests: dict[Any, GenerationRequest],
    max_images_per_call: int,
    partition: Callable[[Any], tuple] | None = None,
) -> list[Group]:
    """Groups in order of first appearance; a group never exceeds ``max_images_per_call`` images.

    Args:
        requests (`dict[int, GenerationRequest]`): valid requests keyed by their row in the batch.
        max_images_per_call (`int`): cap on one call's images (bounds its memory); must be at least the
            largest ``num_images_per_prompt``.
        partition (`Callable`, defaults to None): a request's key -> what else its forward partners must share
            (the engine's: its stage's UNet and a whole-forward LoRA set); None: size alone (decoding).
    """
    open_groups: dict[GroupKey, Group] = {}
    groups: list[Group] = []
    for row, request in requests.items():
        key = GroupKey.of(request, partition(row) if partition else ())
        group = open_groups.get(key)
        if group is None or group.images + request.num_images_per_prompt > max_images_per_call:
            group = Group(key)
            open_groups[key] = group
            groups.append(group)
        group.rows.append(row)
        group.requests.append(request)
    return groups
