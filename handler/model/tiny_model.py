"""Build a tiny SDXL-architecture pipeline offline and save it as a diffusers folder.

The folder has exactly the layout of a real SDXL checkpoint (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``, ``scheduler/``), so it loads
through the same ``StableDiffusionXLPipeline.from_pretrained`` call as real weights. Weights are random
(``torch.manual_seed(0)``) and the CLIP tokenizers are built from a small vocabulary made here, so nothing
is downloaded. Images from it are noise-like; it exists to exercise the serving path end to end.

    python -m handler.model.tiny_model build/tiny-sdxl
    python -m handler.model.tiny_model build/tiny-sdxl-refiner --refiner
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

# SDXL base 1.0's scheduler settings (shared/reference/sdxl-base-1.0/scheduler), so the tiny model
# denoises on the same noise schedule as the real one.
SDXL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}

# Words that get whole-word BPE tokens; everything else is spelled from single byte tokens.
TOKENIZER_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "at",
    "over",
    "under",
    "with",
    "and",
    "photo",
    "painting",
    "portrait",
    "beautiful",
    "sunset",
    "mountains",
    "sky",
    "sea",
    "city",
    "forest",
    "cat",
    "dog",
    "red",
    "blue",
    "green",
    "light",
    "dark",
    "night",
    "day",
    "high",
    "quality",
    "detailed",
    "blurry",
    "ugly",
]

TEXT_HIDDEN_SIZE = 32
TEXT_PROJECTION_DIM = 32
TIME_EMBED_DIM = 8


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, which CLIP's BPE tokenizer expects."""
    printable = list(range(ord("!"), ord("~") + 1))
    printable += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def build_clip_tokenizer():
    """A ``CLIPTokenizer`` from a vocabulary built here: all 256 byte symbols (plain and word-final),
    whole-word merges for ``TOKENIZER_WORDS`` and the two special tokens. ``model_max_length`` is 77 as
    in SDXL (without it the pipeline overflows computing the prompt length)."""
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    vocab_tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in TOKENIZER_WORDS:
        # Merge left to right: "s u" -> "su", "su n" -> "sun", ... the last merge is word-final.
        parts = [*word[:-1], word[-1] + "</w>"]
        merged = parts[0]
        for part in parts[1:]:
            rule = f"{merged} {part}"
            merged += part
            if rule not in merges:
                merges.append(rule)
                vocab_tokens.append(merged)
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_tokens))}

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp, "vocab.json")
        merges_file = Path(tmp, "merges.txt")
        vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)


def build_tiny_pipeline(seed: int = 0, time_cond_proj_dim: int | None = None, inpainting: bool = False):
    """A ``StableDiffusionXLPipeline`` with SDXL's architecture at toy sizes and seeded random weights.

    Args:
        seed (`int`, defaults to 0): seeds ``torch.manual_seed`` before each component is built, so the
            weights are identical on every machine.
        time_cond_proj_dim (`int`, defaults to None): a guidance-distilled UNet (as LCM-SDXL's): the guidance
            scale enters as an embedding of this size instead of a second, unconditional batch.
        inpainting (`bool`, defaults to False): an inpainting UNet (as SDXL-inpainting's): 9 input channels,
            latents + mask + masked-image latents.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
    )

    tokenizer = build_clip_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_PROJECTION_DIM,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config)
    torch.manual_seed(seed)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=9 if inpainting else 4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 1),
        # Both encoders' penultimate hidden states are concatenated, as in SDXL (768 + 1280 there).
        cross_attention_dim=2 * TEXT_HIDDEN_SIZE,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        # 6 time ids (original size, crop, target size) + text_encoder_2's pooled projection.
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_PROJECTION_DIM,
        norm_num_groups=8,
        time_cond_proj_dim=time_cond_proj_dim,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    scheduler = EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=build_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
    )


def build_tiny_refiner(base, seed: int = 1):
    """A ``StableDiffusionXLImg2ImgPipeline`` with the SDXL refiner's architecture at toy sizes: no first text
    encoder, a UNet conditioned on ``text_encoder_2`` alone (its hidden size) and on 5 time ids (original
    size, crop, aesthetic score), sharing ``base``'s ``text_encoder_2``, ``tokenizer_2`` and VAE, as the real
    refiner does in diffusers' ensemble."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=5 * TIME_EMBED_DIM + TEXT_PROJECTION_DIM,
        norm_num_groups=8,
    )
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,  # as stabilityai/stable-diffusion-xl-refiner-1.0's model_index
    )


def save_tiny_pipeline(folder: str | Path, seed: int = 0, inpainting: bool = False, refiner: bool = False) -> Path:
    """Build the tiny pipeline (or, with ``refiner``, the tiny refiner) and save it as a diffusers folder
    (safetensors). Returns the folder."""
    folder = Path(folder)
    base = build_tiny_pipeline(seed, inpainting=inpainting)
    (build_tiny_refiner(base, seed + 1) if refiner else base).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="where to write the diffusers folder")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    parser.add_argument("--inpainting", action="store_true", help="a 9-channel inpainting UNet")
    parser.add_argument("--refiner", action="store_true", help="the tiny refiner (for handler.refiner_path)")
    args = parser.parse_args(argv)
    folder = save_tiny_pipeline(args.folder, args.seed, args.inpainting, args.refiner)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"tiny SDXL {'refiner' if args.refiner else 'pipeline'} written to {folder} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
