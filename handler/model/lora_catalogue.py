"""The LoRA catalogue: adapters named in the model yaml, loaded on first use into an LRU of ``max_loaded_loras``.

Requests name catalogue entries (``loras: [{"name", "scale"}]``); they never pass paths or URLs (a request that
could make the server fetch and load arbitrary weights is a server-side request forgery and a code-loading
risk; see the README). Each adapter is loaded once with diffusers' ``load_lora_weights`` and kept disabled:
:class:`~handler.model.lora_routing.LoraRouter` applies it to the rows that ask for it. An adapter with layers
routing cannot cover (DoRA; a PEFT layer type other than Linear/Conv2d) is applied by PEFT itself to a whole forward
(:meth:`LoraCatalogue.whole_forward`): requests using it share forwards only with requests of the same LoRA set
(:func:`handler.runtime.batching.group_requests`). An adapter in use by a request in flight is pinned; the least
recently used unpinned one is deleted when more than ``max_loaded`` are loaded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from handler.contract.settings import CatalogueLora
from handler.model.lora_routing import LoraRouter, routable_layer_types

log = logging.getLogger(__name__)


@dataclass
class CatalogueStats:
    loads: int = 0
    hits: int = 0
    evictions: int = 0
    load_ms: list[float] = field(default_factory=list)
    events: list[tuple[str, str, float]] = field(default_factory=list)  # (kind, name, load ms) not yet taken

    def note(self, kind: str, name: str, load_ms: float = 0.0) -> None:
        self.events.append((kind, name, load_ms))

    def take_events(self) -> list[tuple[str, str, float]]:
        """The events since the last call (for the metrics), cleared."""
        events, self.events = self.events, []
        return events


class LoraCatalogue:
    """Loads, pins and evicts catalogue adapters on one pipeline.

    Args:
        pipeline: the loaded SDXL pipeline (diffusers' LoRA loader mixin).
        entries (`dict[str, CatalogueLora]`): name -> where its weights are.
        max_loaded (`int`): adapters kept loaded at most (more only while all of them are in use).
        grouped (`bool`, defaults to False): apply every adapter to whole forwards (never route per row).
    """

    def __init__(self, pipeline: Any, entries: dict[str, CatalogueLora], max_loaded: int, grouped: bool = False):
        self.grouped = grouped
        self.pipeline = pipeline
        self.entries = entries
        self.max_loaded = max_loaded
        self.router = LoraRouter()
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self.pins: Counter[str] = Counter()
        self.whole_forward_names: set[str] = set()  # loaded adapters PEFT applies to whole forwards
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
                        self.stats.note("hit", name)
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
        if self.grouped or self._unroutable_layers(name):
            self.whole_forward_names.add(name)
        pipe = self.pipeline
        self.router.attach(pipe.unet, getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
        self.loaded[name] = None
        self.stats.loads += 1
        self.stats.load_ms.append((time.perf_counter() - started) * 1000)
        self.stats.note("load", name, self.stats.load_ms[-1])
        log.info("LoRA %s loaded from %s in %.0f ms", name, entry.path, self.stats.load_ms[-1])

    def whole_forward_set(self, loras: tuple) -> tuple:
        """A request's LoRA set ((name, scale), ...) if PEFT must apply it to a whole forward, else ()."""
        return tuple(loras) if any(name in self.whole_forward_names for name, _ in loras) else ()

    @contextmanager
    def whole_forward(self, loras: tuple) -> Iterator[None]:
        """PEFT applies ``loras`` to every row of the forwards inside (``set_adapters`` + ``enable_lora``); after
        them, whatever happened, LoRA is disabled again and the layers' scalings are what they were (diffusers'
        ``set_adapters`` rewrites them, and the router reads them)."""
        names, scales = [name for name, _ in loras], [scale for _, scale in loras]
        layers = [(m, n) for m in self._lora_layers() for n in names if n in m.scaling]
        saved = [m.scaling[n] for m, n in layers]
        self.pipeline.set_adapters(names, adapter_weights=scales)
        self.pipeline.enable_lora()
        try:
            yield
        finally:
            self.pipeline.disable_lora()
            for (module, name), scaling in zip(layers, saved, strict=True):
                module.scaling[name] = scaling

    def _lora_layers(self) -> Iterator[Any]:
        from peft.tuners.lora.layer import LoraLayer

        pipe = self.pipeline
        for model in (pipe.unet, getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)):
            for module in model.modules() if model is not None else ():
                if isinstance(module, LoraLayer):
                    yield module

    def _unroutable_layers(self, name: str) -> int:
        return sum(
            not isinstance(module, routable_layer_types()) or bool(module.use_dora.get(name))
            for module in self._lora_layers()
            if name in module.lora_A
        )

    def _evict(self) -> None:
        for name in list(self.loaded):
            if len(self.loaded) <= self.max_loaded:
                return
            if self.pins[name] == 0:
                self.pipeline.delete_adapters(name)
                del self.loaded[name]
                self.whole_forward_names.discard(name)
                self.stats.evictions += 1
                self.stats.note("evict", name)
                log.info("LoRA %s evicted (%d loaded)", name, len(self.loaded))
