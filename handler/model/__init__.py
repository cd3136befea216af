"""Torch code: the denoiser, conditioning, init latents, the refiner, LoRA catalogue and routing, loading, the
tiny model."""
