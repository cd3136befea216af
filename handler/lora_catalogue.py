"""The LoRA catalogue: adapters named in the model yaml, loaded on first use into an LRU of ``max_loaded_loras``.

Requests name catalogue entries (``loras: [{"name", "scale"}]``); they never pass paths or URLs (a request that
could make the server fetch and load arbitrary weights is a server-side request forgery and a code-loading
risk; see the README). Each adapter is loaded once with diffusers' ``load_lora_weights`` and kept disabled:
:class:`~handler.lora_routing.LoraRouter` applies it to the rows that ask for it. An adapter in use by a
request in flight is pinned; the least recently used unpinned one is deleted when more than ``max_loaded``
are loaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .errors import ServingError
from .lora_routing import LoraRouter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogueLora:
    """One ``handler.lora_catalogue`` entry."""

    path: str  # a folder, hub id or .safetensors file
    scale: float = 1.0  # a request's scale when it gives none
    weight_name: str | None = None


@dataclass
class CatalogueStats:
    loads: int = 0
    hits: int = 0
    evictions: int = 0
    load_ms: list[float] = field(default_factory=list)


class LoraCatalogue:
    """Loads, pins and evicts catalogue adapters on one pipeline.

    Args:
        pipeline: the loaded SDXL pipeline (diffusers' LoRA loader mixin).
        entries (`dict[str, CatalogueLora]`): name -> where its weights are.
        max_loaded (`int`): adapters kept loaded at most (more only while all of them are in use).
    """

    def __init__(self, pipeline: Any, entries: dict[str, CatalogueLora], max_loaded: int):
        self.pipeline = pipeline
        self.entries = entries
        self.max_loaded = max_loaded
        self.router = LoraRouter()
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self.pins: Counter[str] = Counter()
        self.stats = CatalogueStats()
        self.lock = threading.Lock()

    def acquire(self, names: list[str]) -> None:
        """Make ``names`` loaded and pin them (until :meth:`release`)."""
        with self.lock:
            pinned = []
            try:
                for name in names:
                    if name in self.loaded:
                        self.loaded.move_to_end(name)
                        self.stats.hits += 1
                    else:
                        self._load(name)
                    self.pins[name] += 1
                    pinned.append(name)
            except BaseException:  # this request fails; what it pinned so far is free again
                for name in pinned:
                    self.pins[name] -= 1
                    if self.pins[name] <= 0:
                        del self.pins[name]
                raise
            finally:
                self._evict()

    def release(self, names: list[str]) -> None:
        with self.lock:
            for name in names:
                self.pins[name] -= 1
                if self.pins[name] <= 0:
                    del self.pins[name]
            self._evict()

    def _load(self, name: str) -> None:
        entry = self.entries[name]
        started = time.perf_counter()
        extra = {"weight_name": entry.weight_name} if entry.weight_name else {}
        self.pipeline.load_lora_weights(entry.path, adapter_name=name, **extra)
        self.pipeline.disable_lora()  # PEFT computes the base layer; the router adds each row's deltas
        unroutable = self._unroutable_layers(name)
        if unroutable:
            self.pipeline.delete_adapters(name)
            raise ServingError(
                f"LoRA {name!r} has {unroutable} layer(s) that per-row routing does not cover (conv layers or "
                "DoRA); fuse it at load with handler.loras instead"
            )
        pipe = self.pipeline
        self.router.attach(pipe.unet, getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
        self.loaded[name] = None
        self.stats.loads += 1
        self.stats.load_ms.append((time.perf_counter() - started) * 1000)
        log.info("LoRA %s loaded from %s in %.0f ms", name, entry.path, self.stats.load_ms[-1])

    def _unroutable_layers(self, name: str) -> int:
        from peft.tuners.lora.layer import Linear as LoraLinear
        from peft.tuners.lora.layer import LoraLayer

        pipe, count = self.pipeline, 0
        for model in (pipe.unet, getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)):
            for module in model.modules() if model is not None else ():
                if isinstance(module, LoraLayer) and name in module.lora_A:
                    count += not isinstance(module, LoraLinear) or bool(module.use_dora.get(name))
        return count

    def _evict(self) -> None:
        for name in list(self.loaded):
            if len(self.loaded) <= self.max_loaded:
                return
            if self.pins[name] == 0:
                self.pipeline.delete_adapters(name)
                del self.loaded[name]
                self.stats.evictions += 1
                log.info("LoRA %s evicted (%d loaded)", name, len(self.loaded))
