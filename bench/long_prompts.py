"""What long prompts cost: images/s with every request at 3 chunks against every request at 1 chunk (and a mix,
whose forwards carry the padding mask), then the masked cross-attention's own cost.

    python -m bench.long_prompts                          # tiny model, 64 px, batch 4, 4 steps (~3 min here)
    python -m bench.long_prompts --out bench/results/DATE-long-prompts

1. Throughput, in-process (the handler's engine, no server: the difference is the model's, not the wire's):
   16 requests in batches of 4, each variant timed in every round, rounds interleaved, the median kept.
   ``1-chunk``: ~20-token prompts; ``3-chunk``: ~200-token prompts (225-token limit: 3 chunks of 77);
   ``mixed``: per batch one 3-chunk request and three 1-chunk ones, so every UNet forward is padded and masked.
2. Text encoding alone: one request's ``encode_prompts`` at 1 and at 3 chunks.
3. Cross-attention with and without the mask, at the tiny UNet's size (its whole forward) and, for SDXL's real
   shapes, ``scaled_dot_product_attention`` alone with SDXL's 64x64 and 32x32 attention blocks at 1024 px
   (10 heads x 64 and 20 heads x 64; keys 77 or 231): 231 keys unmasked, 231 keys with the additive mask
   diffusers builds from ``encoder_attention_mask``, and 77 keys, the 1-chunk baseline.
Writes results.json (machine, versions, every figure) into --out, and prints it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from bench.direct import direct_engine
from bench.variants import machine_info
from handler.contract.parse import parse_request
from handler.contract.settings import HandlerSettings
from handler.model.denoise import text_context
from handler.model.loading import load_pipeline
from handler.model.text_encoding import encode_prompts
from handler.model.tiny_model import save_tiny_pipeline

REPO_ROOT = Path(__file__).resolve().parent.parent
SHORT = "a lighthouse on a cliff at dawn, {i}"
PHRASES = ["a red cat", "on the hill", "in the snow", "at night", "over the sea"]


def long_prompt(tokenizer, index: int, tokens: int = 200) -> str:
    words = [f"{index}"]
    while len(tokenizer(" ".join(words), add_special_tokens=False).input_ids) < tokens:
        words.append(PHRASES[len(words) % len(PHRASES)])
    return " ".join(words)


def requests_for(variant: str, loaded, settings, total: int, size: int, steps: int) -> list:
    tokenizer = loaded.pipeline.tokenizer

    def text(i: int) -> str:
        wants_long = variant == "3-chunk" or (variant == "mixed" and i % 4 == 0)
        return long_prompt(tokenizer, i) if wants_long else SHORT.format(i=i)

    bodies = [{"prompt": text(i), "seed": i, "width": size, "height": size, "num_inference_steps": steps}
              for i in range(total)]  # fmt: skip
    return [parse_request(body, settings.limits, settings.defaults) for body in bodies]


def throughput(loaded, settings, rounds: int, total: int, batch: int, size: int, steps: int) -> dict:
    engine = direct_engine(loaded.pipeline, loaded.device, batch)
    variants = {v: requests_for(v, loaded, settings, total, size, steps) for v in ("1-chunk", "3-chunk", "mixed")}
    for requests in variants.values():  # warm each shape once
        engine.generate(requests[:batch])
    walls: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for variant, requests in variants.items():
            started = time.perf_counter()
            for start in range(0, total, batch):
                engine.generate(requests[start : start + batch])
            walls[variant].append(time.perf_counter() - started)
    result = {v: {"images_per_s": round(total / statistics.median(w), 3), "walls_s": [round(x, 3) for x in w]}
              for v, w in walls.items()}  # fmt: skip
    result["ratio_3_to_1_chunk"] = round(result["3-chunk"]["images_per_s"] / result["1-chunk"]["images_per_s"], 3)
    result["ratio_mixed_to_1_chunk"] = round(result["mixed"]["images_per_s"] / result["1-chunk"]["images_per_s"], 3)
    return result


def median_ms(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 3)


def text_encoding(loaded, settings, repeats: int) -> dict:
    out = {}
    for chunks, prompt in ((1, SHORT.format(i=0)), (3, long_prompt(loaded.pipeline.tokenizer, 0))):
        request = parse_request({"prompt": prompt}, settings.limits, settings.defaults)
        with torch.no_grad():
            out[f"{chunks}-chunk_ms"] = median_ms(lambda r=request: encode_prompts(loaded.pipeline, loaded.device,
                                                                                   r, True), repeats)  # fmt: skip
    return out


def tiny_unet_forward(loaded, settings, rows: int, size: int, repeats: int) -> dict:
    """The tiny UNet's whole forward over ``rows`` rows: 231 keys unmasked, 231 masked (one row in four long),
    and 77 keys."""
    pipeline = loaded.pipeline
    unet = pipeline.unet
    latents = torch.randn(rows, unet.config.in_channels, size // 8, size // 8)
    timestep = torch.full((rows,), 500.0)
    width = unet.config.cross_attention_dim
    pooled = torch.randn(rows, pipeline.text_encoder_2.config.projection_dim)
    time_ids = torch.tensor([[size, size, 0, 0, size, size]] * rows, dtype=torch.float32)

    class Row:  # what text_context reads of a request state
        def __init__(self, length: int):
            self.embeds = torch.randn(1, length, width)

    def forward(states) -> None:
        hidden, mask = text_context(states)
        with torch.no_grad():
            unet(latents, timestep, encoder_hidden_states=hidden, encoder_attention_mask=mask,
                 added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}, return_dict=False)  # fmt: skip

    return {
        "rows": rows,
        "keys_231_unmasked_ms": median_ms(lambda: forward([Row(231) for _ in range(rows)]), repeats),
        "keys_231_masked_ms": median_ms(
            lambda: forward([Row(231 if i % 4 == 0 else 77) for i in range(rows)]), repeats
        ),
        "keys_77_ms": median_ms(lambda: forward([Row(77) for _ in range(rows)]), repeats),
    }


def sdxl_attention(rows: int, repeats: int) -> dict:
    """``scaled_dot_product_attention`` at SDXL's cross-attention shapes (1024 px): per block size, 77 keys,
    231 unmasked, 231 with diffusers' additive mask (0 kept, -10000 padding; one row in four long)."""
    out = {}
    for name, (tokens, heads) in {"64x64_block": (4096, 10), "32x32_block": (1024, 20)}.items():
        query = torch.randn(rows, heads, tokens, 64)

        def attend(keys: int, mask: torch.Tensor | None, q=query, h=heads) -> None:
            kv = torch.randn(rows, h, keys, 64)
            torch.nn.functional.scaled_dot_product_attention(q, kv, kv, attn_mask=mask)

        bias = torch.zeros(rows, 1, 1, 231)
        for row in range(rows):
            if row % 4:
                bias[row, ..., 77:] = -10000.0
        out[name] = {
            "keys_77_ms": median_ms(lambda a=attend: a(77, None), repeats),
            "keys_231_unmasked_ms": median_ms(lambda a=attend: a(231, None), repeats),
            "keys_231_masked_ms": median_ms(lambda a=attend, b=bias: a(231, b), repeats),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="image side in px (default 64)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (default 4)")
    parser.add_argument("--batch", type=int, default=4, help="requests per batch (default 4)")
    parser.add_argument("--requests", type=int, default=16, help="requests per variant and round (default 16)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over the variants (default 3)")
    parser.add_argument("--repeats", type=int, default=20, help="repeats of each timed forward (default 20)")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / f"{datetime.now():%Y-%m-%d}-long"))
    args = parser.parse_args()

    settings = HandlerSettings.from_yaml(yaml.safe_load((REPO_ROOT / "config" / "tiny-sdxl.yaml").read_text()))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        loaded = load_pipeline(str(save_tiny_pipeline(Path(scratch) / "tiny-sdxl")), settings)
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": vars(args),
        "throughput": throughput(loaded, settings, args.rounds, args.requests, args.batch, args.size, args.steps),
        "text_encoding": text_encoding(loaded, settings, args.repeats),
        "tiny_unet_forward": tiny_unet_forward(loaded, settings, 2 * args.batch, args.size, args.repeats),
        "sdxl_cross_attention": sdxl_attention(2 * args.batch, max(3, args.repeats // 4)),
    }
    (Path(args.out) / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
