"""A request's first latents, as diffusers' SDXL pipelines prepare them, one request at a time.

    text-to-image           seeded noise x the scheduler's initial sigma (``StableDiffusionXLPipeline``)
    img2img                 the init image VAE-encoded (sampled with the image's own generator) and noised to the
                            request's first timestep (``StableDiffusionXLImg2ImgPipeline``)
    inpainting              as ``StableDiffusionXLInpaintPipeline``: pure noise at strength 1, else the image
                            noised; a binarized mask at latent size; the masked image's latents. A 4-channel UNet
                            blends the unmasked image back after every step (:class:`Inpainting`); a 9-channel
                            (inpainting) UNet takes mask and masked-image latents as 5 extra input channels, and
                            then text-only and img2img requests use an all-ones mask (A1111's rule)

Each image i of a request draws from its own generator (seed + i) in the pipelines' order (image encode, noise,
masked-image encode), so image i equals the single image of a request with seed + i and any sampler that draws
noise later sees the pipeline's generator state. (diffusers' inpainting encodes the image once with the first
generator for all images; for one image per request the two agree.)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from handler.model import vae


@dataclass
class Inpainting:
    """What a 4-channel UNet's inpainting blends back after each step: the unmasked image, noised to the next
    timestep (the pipeline's loop)."""

    image_latents: torch.Tensor  # (images, C, h, w)
    noise: torch.Tensor
    mask: torch.Tensor  # (images, 1, h, w); 1 = repaint

    def blend(self, latents: torch.Tensor, scheduler: Any, timesteps: torch.Tensor, step: int) -> torch.Tensor:
        proper = self.image_latents
        if step < len(timesteps) - 1:
            proper = scheduler.add_noise(proper, self.noise, timesteps[step + 1 : step + 2])
        return (1 - self.mask) * proper + self.mask * latents


@dataclass
class Prepared:
    latents: torch.Tensor
    unet_extra: torch.Tensor | None = None  # 9-channel UNet: (unet_rows, 5, h, w), mask + masked-image latents
    inpainting: Inpainting | None = None


class LatentPreparer:
    """Prepares first latents on one pipeline. Keeps the VAE encoding of the blank (all-masked) image per size,
    which every text-only request on an inpainting UNet needs, so they skip the VAE."""

    BLANK_SIZES_KEPT = 8

    def __init__(self, pipeline: Any, device: torch.device):
        self.pipeline = pipeline
        self.device = device
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=pipeline.vae_scale_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
        )
        self.blank: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self.blank_lock = threading.Lock()  # prepared on the side thread or inline

    @property
    def inpainting_unet(self) -> bool:
        return self.pipeline.unet.config.in_channels == 9

    def needs_vae(self, request: Any) -> bool:
        """Whether its latents need the VAE encoder (the engine then prepares them beside the steps)."""
        return request.image is not None or (self.inpainting_unet and self._blank_key(request) not in self.blank)

    def prepare(self, request: Any, scheduler: Any, timesteps: torch.Tensor, generators: list, guidance: bool):
        """The first latents of ``request`` (and what its steps need besides), on its own scheduler."""
        dtype = self.pipeline.unet.dtype
        if request.mask_image is None and not self.inpainting_unet:
            if request.image is None:  # 1. text-to-image
                noise = randn_tensor(self._shape(request), generator=generators, device=self.device, dtype=dtype)
                return Prepared(noise * scheduler.init_noise_sigma)
            # 2. img2img: encode (generator i), then noise (generator i), then noised to the first timestep.
            distribution = self._encode(self.pipeline.image_processor.preprocess(request.image.pixels), dtype)
            image_latents = self._sample(distribution, generators, dtype)
            noise = randn_tensor(image_latents.shape, generator=generators, device=self.device, dtype=dtype)
            first = timesteps[:1].repeat(len(generators))
            return Prepared(scheduler.add_noise(image_latents, noise, first))
        return self._inpainting(request, scheduler, timesteps, generators, guidance, dtype)

    def _inpainting(self, request, scheduler, timesteps, generators, guidance, dtype) -> Prepared:
        # 3. Image in [-1, 1] and binarized mask (all ones without one: repaint everything).
        height, width = request.height, request.width
        pixels = None if request.image is None else self.pipeline.image_processor.preprocess(request.image.pixels)
        if request.mask_image is not None:
            mask = self.mask_processor.preprocess(request.mask_image.pixels)
        else:
            mask = torch.ones(1, 1, height, width)
        strength_max = request.strength is None or request.strength == 1.0
        nine_channels = self.inpainting_unet

        # 4. Latents: the image's (when blended back, or noised) drawn first, then the noise.
        image_latents = None
        if not nine_channels or not strength_max:
            image_latents = self._sample(self._encode(pixels, dtype), generators, dtype)
        noise = randn_tensor(self._shape(request), generator=generators, device=self.device, dtype=dtype)
        if strength_max:
            latents = noise * scheduler.init_noise_sigma
        else:
            latents = scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(len(generators)))

        # 5. Mask at latent size; the masked image's latents, drawn last (a 4-channel UNet never uses them,
        # but the pipeline draws them, so later draws of a noise-adding sampler see the same generator state).
        latent_size = (height // self.pipeline.vae_scale_factor, width // self.pipeline.vae_scale_factor)
        small_mask = torch.nn.functional.interpolate(mask, size=latent_size).to(self.device, dtype)
        small_mask = small_mask.repeat(len(generators), 1, 1, 1)
        if not nine_channels:
            shape = (1, *image_latents.shape[1:])
            for generator in generators:
                torch.randn(shape, generator=generator, dtype=self._encode_dtype())
            return Prepared(latents, inpainting=Inpainting(image_latents, noise, small_mask))
        if pixels is None:
            masked = self._blank_distribution(request, dtype)
        else:
            masked = self._encode(pixels * (mask < 0.5), dtype)
        extra = torch.cat([small_mask, self._sample(masked, generators, dtype)], dim=1)
        return Prepared(latents, unet_extra=torch.cat([extra] * 2) if guidance else extra)

    # -- the VAE encoder ----------------------------------------------------------------------------

    def _shape(self, request: Any) -> tuple[int, int, int, int]:
        factor = self.pipeline.vae_scale_factor
        channels = self.pipeline.vae.config.latent_channels
        return (request.num_images_per_prompt, channels, request.height // factor, request.width // factor)

    def _encode_dtype(self) -> torch.dtype:
        return vae.encode_dtype(self.pipeline.vae)

    @torch.inference_mode()
    def _encode(self, pixels: torch.Tensor, dtype: torch.dtype) -> Any:
        """The VAE's latent distribution of one image; through the model's dtype first, as the pipelines do."""
        return vae.encode(self.pipeline.vae, pixels.to(self.device, dtype))

    def _sample(self, distribution: Any, generators: list, dtype: torch.dtype) -> torch.Tensor:
        """One latent sample per generator, scaled into the UNet's latent space."""
        latents = torch.cat([distribution.sample(generator) for generator in generators]).to(dtype)
        return vae.into_unet_space(self.pipeline.vae, latents)

    def _blank_key(self, request: Any) -> tuple[int, int]:
        return (request.height, request.width)

    def _blank_distribution(self, request: Any, dtype: torch.dtype) -> Any:
        key = self._blank_key(request)
        with self.blank_lock:
            return self._blank_locked(key, request, dtype)

    def _blank_locked(self, key: tuple[int, int], request: Any, dtype: torch.dtype) -> Any:
        if key not in self.blank:
            self.blank[key] = self._encode(torch.zeros(1, 3, request.height, request.width), dtype)
            while len(self.blank) > self.BLANK_SIZES_KEPT:
                self.blank.popitem(last=False)
        self.blank.move_to_end(key)
        return self.blank[key]
