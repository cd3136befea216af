"""The per-forward cost of per-row LoRA routing: one UNet forward with every row on its own LoRA, over none.

    python -m bench.lora_overhead                     # tiny model, 64 px, 8 rows, 4 rank-4 LoRAs
    python -m bench.lora_overhead --size 128 --rows 16

Times one UNet forward (median of --repeats) for: no LoRA loaded; 4 LoRAs loaded but no row asking; the rows
split over the 4 LoRAs (routed, one forward); and, for comparison, each LoRA's rows in a forward of their own
(grouping by adapter: 4 forwards). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from handler.contract.settings import CatalogueLora
from handler.model.lora_catalogue import LoraCatalogue
from handler.model.lora_routing import Route
from handler.model.tiny_model import build_tiny_pipeline


def make_lora(folder: Path, seed: int, rank: int) -> str:
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = build_tiny_pipeline().unet
    torch.manual_seed(seed)
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False))
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet))
    return str(folder)


@torch.inference_mode()
def timed(forward, repeats: int) -> float:
    forward()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        forward()
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--loras", type=int, default=4)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    pipe = build_tiny_pipeline()
    unet, latent = pipe.unet, args.size // pipe.vae_scale_factor
    sample = torch.randn(args.rows, 4, latent, latent)
    t = torch.full((args.rows,), 500.0)
    embeds = torch.randn(args.rows, 77, unet.config.cross_attention_dim)
    added = {"text_embeds": torch.randn(args.rows, 32), "time_ids": torch.randn(args.rows, 6)}

    def forward(rows=slice(None)):
        return unet(sample[rows], t[rows], encoder_hidden_states=embeds[rows], added_cond_kwargs={
            k: v[rows] for k, v in added.items()}, return_dict=False)[0]  # fmt: skip

    results = {"settings": vars(args), "ms_per_forward": {}}
    results["ms_per_forward"]["no_lora"] = timed(forward, args.repeats)
    root = Path(tempfile.mkdtemp(prefix="sdxl-lora-bench-"))
    names = [f"lora{i}" for i in range(args.loras)]
    entries = {name: CatalogueLora(make_lora(root / name, i + 1, args.rank)) for i, name in enumerate(names)}
    catalogue = LoraCatalogue(pipe, entries, max_loaded=args.loras)
    catalogue.acquire(names)
    results["ms_per_forward"]["loaded_not_asked"] = timed(forward, args.repeats)
    per = args.rows // args.loras
    routes = [
        Route(name, torch.arange(i * per, (i + 1) * per), torch.full((per,), 0.8)) for i, name in enumerate(names)
    ]

    def routed():
        with catalogue.router.route(routes):
            return forward()

    def grouped():
        for route in routes:
            with catalogue.router.route([Route(route.adapter, None, 0.8)]):
                forward(slice(int(route.rows[0]), int(route.rows[-1]) + 1))

    results["ms_per_forward"]["routed_one_forward"] = timed(routed, args.repeats)
    results["ms_per_forward"]["grouped_by_adapter"] = timed(grouped, args.repeats)
    base = results["ms_per_forward"]["no_lora"]
    results["ratio_to_no_lora"] = {k: round(v / base, 3) for k, v in results["ms_per_forward"].items()}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
