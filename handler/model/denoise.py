"""SDXL denoising with per-request state, so requests can share UNet forwards yet start, stop and finish alone.

Each request holds its own prompt embeddings (encoded once, on their own), seeded noise, scheduler copy and
step counter (:class:`RequestState`). :meth:`Denoiser.step` advances any set of same-size requests by one
step with ONE UNet forward: a per-sample timestep vector and a per-sample guidance scale, so step counts and
guidance may differ inside it. The math is ``StableDiffusionXLPipeline.__call__``'s, step for step
(checked against it in the tests).
"""

from __future__ import annotations

import contextlib
import gc
import time
from typing import Any

import torch

from handler.contract.errors import InvalidRequest, NonFiniteImage
from handler.contract.request import GenerationRequest
from handler.contract.stages import Stage
from handler.model import vae
from handler.model.conditioning import encode_conditioning
from handler.model.init_latents import LatentPreparer
from handler.model.lora_routing import Route
from handler.model.refiner import base_part, refiner_part
from handler.model.request_state import LaterStage, RequestState, image_seeds, keep_unmasked, scheduler_step_kwargs
from handler.model.scheduling import build_scheduler


class Denoiser:
    """Starts, steps and decodes requests on one SDXL pipeline.

    :meth:`start` prepares a request through small named seams, each the one place a feature plugs in:
    :meth:`encode_conditioning` (prompts, micro-conditioning), :meth:`make_scheduler` (the sampler),
    :meth:`set_timesteps` (step count, strength), :meth:`prepare_latents` (noise, an init image, a mask).
    """

    def __init__(
        self,
        pipeline: Any,
        device: torch.device,
        memory_ceiling_latent_pixels: int | None = None,
        loras: Any = None,
        refiner: Any = None,
    ):
        """
        Args:
            pipeline: a loaded ``StableDiffusionXLPipeline``.
            device (`torch.device`): where it runs.
            memory_ceiling_latent_pixels (`int`, defaults to None): fault injection for the out-of-memory
                path: a UNet forward over more latent pixels than this raises ``torch.OutOfMemoryError``.
            loras (`LoraCatalogue`, defaults to None): the LoRA catalogue requests choose from; its router
                applies each request's LoRAs to its own rows.
            refiner (defaults to None): a ``StableDiffusionXLImg2ImgPipeline`` (the SDXL refiner) that requests
                with ``denoising_end`` hand over to.
        """
        self.loras = loras
        self.refiner = refiner
        self.memory_ceiling_latent_pixels = memory_ceiling_latent_pixels
        self.pipeline = pipeline
        self.device = device
        self.latents = LatentPreparer(pipeline, device)

    @property
    def guidance_embedding_dim(self) -> int | None:
        """Set for a guidance-distilled UNet (LCM-SDXL): guidance is an input embedding, not a second batch."""
        return self.pipeline.unet.config.time_cond_proj_dim

    def uses_guidance(self, request: GenerationRequest) -> bool:
        """The pipeline's rule: classifier-free guidance only above 1, and never for a guidance-distilled UNet."""
        return request.guidance_scale > 1 and self.guidance_embedding_dim is None

    def guidance_condition(self, request: GenerationRequest, dtype: torch.dtype) -> torch.Tensor | None:
        """A guidance-distilled UNet's per-image guidance embedding of ``guidance_scale - 1`` (the pipeline's
        rule), so requests with different guidance still share one forward; None for any other UNet."""
        if self.guidance_embedding_dim is None:
            return None
        scales = torch.tensor(request.guidance_scale - 1).repeat(request.num_images_per_prompt)
        embedding = self.pipeline.get_guidance_scale_embedding(scales, embedding_dim=self.guidance_embedding_dim)
        return embedding.to(device=self.device, dtype=dtype)

    @torch.inference_mode()
    def start(self, request: GenerationRequest) -> RequestState:
        """Prepare one request: conditioning, its own scheduler and timesteps, seeded generators, and its
        latents unless they need the VAE encoder (:meth:`needs_vae`: then :meth:`prepare_latents`, later)."""
        started = time.perf_counter()
        guidance = self.uses_guidance(request)
        embeds, pooled, time_ids = self.encode_conditioning(request, guidance)
        scheduler = self.make_scheduler(request)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in image_seeds(request)]
        state = RequestState(
            request=request,
            guidance=guidance,
            embeds=embeds,
            pooled=pooled,
            time_ids=time_ids,
            latents=None,
            scheduler=scheduler,
            timesteps=self.set_timesteps(scheduler, request),
            generators=generators,
            step_kwargs=scheduler_step_kwargs(scheduler, generators, request.eta),
            guidance_condition=self.guidance_condition(request, embeds.dtype),
            started=started,
        )
        if request.denoising_end is not None:
            self.plan_refiner(state)
        state.timings_ms[Stage.ENCODE_PROMPT] = (time.perf_counter() - started) * 1000
        if not self.needs_vae(request):
            self.prepare_latents(state)
        return state

    def needs_vae(self, request: GenerationRequest) -> bool:
        """Its first latents need the VAE encoder (an init image; an inpainting UNet's blank image the first
        time a size is seen): the engine prepares them beside the steps."""
        return self.latents.needs_vae(request)

    @torch.inference_mode()
    def prepare_latents(self, state: RequestState) -> RequestState:
        """Its first latents (:mod:`handler.model.init_latents`), timed as ``vae_encode`` when the VAE ran."""
        started = time.perf_counter()
        encoded = self.needs_vae(state.request)
        prepared = self.latents.prepare(
            state.request, state.scheduler, state.timesteps, state.generators, state.guidance
        )
        state.latents, state.unet_extra, state.inpainting = prepared.latents, prepared.unet_extra, prepared.inpainting
        if encoded:
            state.timings_ms[Stage.VAE_ENCODE] = (time.perf_counter() - started) * 1000
        return state

    # -- the per-request seams ----------------------------------------------------------------------

    def encode_conditioning(
        self, request: GenerationRequest, guidance: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt embeddings, pooled embeddings and SDXL's time ids (:mod:`handler.model.conditioning`), with the
        request's LoRAs on the text encoders (the ones that have LoRA layers)."""
        with self._text_loras(request):
            return encode_conditioning(self.pipeline, self.device, request, guidance)

    def _text_loras(self, request: GenerationRequest) -> Any:
        """The request's LoRAs on the text encoders while its prompts are encoded (the refiner shares
        ``text_encoder_2``, so its encoding gets them too, as in diffusers' ensemble)."""
        if not request.loras:
            return contextlib.nullcontext()
        whole = self.loras.whole_forward_set(request.loras)
        if whole:
            return self.loras.whole_forward(whole)
        return self.loras.router.route([Route(name, None, scale) for name, scale in request.loras])

    def whole_forward_adapters(self, request: GenerationRequest) -> tuple:
        """The LoRA set that needs forwards of its own (() when its LoRAs are routed per row, or it has none)."""
        return self.loras.whole_forward_set(request.loras) if request.loras else ()

    def plan_refiner(self, state: RequestState) -> None:
        """Cut the base stage at ``denoising_end`` and prepare the refiner stage (:mod:`handler.model.refiner`): its
        own scheduler of the refiner's config, its timesteps below the cut, its text conditioning."""
        request = state.request
        state.timesteps = base_part(state.scheduler, state.timesteps, request.denoising_end)
        scheduler = build_scheduler(request.sampler, request.schedule, request.eta, self.refiner.scheduler)
        scheduler.set_timesteps(request.num_inference_steps, device=self.device)
        timesteps = refiner_part(scheduler, request.denoising_end)
        if len(state.timesteps) == 0 or len(timesteps) == 0:  # refused at parse (handler.contract.steps) already
            raise InvalidRequest(
                f"`denoising_end` {request.denoising_end} leaves {len(state.timesteps)} of the "
                f"{request.num_inference_steps} steps to the base and {len(timesteps)} to the refiner; each needs "
                "at least one (more steps, or a hand-over nearer the middle)",
                field="denoising_end",
                value=request.denoising_end,
            )
        guidance = request.guidance_scale > 1 and self.refiner.unet.config.time_cond_proj_dim is None
        with self._text_loras(request):
            embeds, pooled, time_ids = encode_conditioning(self.refiner, self.device, request, guidance, refiner=True)
        step_kwargs = scheduler_step_kwargs(scheduler, state.generators, request.eta)
        state.later = LaterStage(guidance, embeds, pooled, time_ids, scheduler, timesteps, step_kwargs)

    def hand_over(self, state: RequestState) -> None:
        """The base stage is done: the same latents go on in the refiner stage, no new noise added."""
        later, state.later = state.later, None
        state.model, state.stage_start = "refiner", state.step
        state.guidance, state.embeds, state.pooled, state.time_ids = (
            later.guidance, later.embeds, later.pooled, later.time_ids
        )  # fmt: skip
        state.scheduler, state.timesteps, state.step_kwargs = later.scheduler, later.timesteps, later.step_kwargs
        state.guidance_condition = state.unet_extra = None

    def make_scheduler(self, request: GenerationRequest) -> Any:
        """A scheduler of this request's own: its sampler and schedule on the pipeline's scheduler config
        (:mod:`handler.contract.samplers`), never the shared one, so it can sit at any step whatever the others do."""
        return build_scheduler(request.sampler, request.schedule, request.eta, self.pipeline.scheduler)

    def set_timesteps(self, scheduler: Any, request: GenerationRequest) -> torch.Tensor:
        """The request's timesteps: the whole schedule of ``num_inference_steps``, or with an image its last
        ``denoising_steps`` (the img2img pipelines' cut, with the scheduler's begin index set to match)."""
        scheduler.set_timesteps(request.num_inference_steps, device=self.device)
        start = (request.num_inference_steps - request.denoising_steps) * scheduler.order
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        return scheduler.timesteps[start:]

    @torch.inference_mode()
    def step(self, states: list[RequestState]) -> None:
        """Advance every (unfinished, same-size) state by one step with ONE UNet forward."""
        # 1. One UNet batch: per state [negative rows, positive rows] (or positive only without guidance).
        inputs, timesteps = [], []
        for state in states:
            t = state.timesteps[state.stage_step]
            scaled = state.scheduler.scale_model_input(state.latents, t)
            rows = torch.cat([scaled] * (2 if state.guidance else 1))
            inputs.append(rows if state.unet_extra is None else torch.cat([rows, state.unet_extra], dim=1))
            timesteps.append(t.expand(state.unet_rows))
        batch_input = torch.cat(inputs)
        if self.memory_ceiling_latent_pixels is not None:
            pixels = batch_input.shape[0] * batch_input.shape[-2] * batch_input.shape[-1]
            if pixels > self.memory_ceiling_latent_pixels:
                raise torch.OutOfMemoryError(
                    f"simulated: {pixels} latent pixels in one UNet forward exceed "
                    f"memory_ceiling_latent_pixels={self.memory_ceiling_latent_pixels}"
                )
        unet = self.unet_of(states[0])
        distilled = unet.config.time_cond_proj_dim is not None
        with self._lora_routes(states):
            noise = self._unet(unet, states, batch_input, timesteps, distilled)

        # 2. Each state takes its rows back, applies its own guidance and steps its own scheduler.
        self._take_rows(states, noise)

    def _lora_routes(self, states: list[RequestState]) -> Any:
        """Each requested LoRA on the UNet rows of the requests that ask for it, at their scales; or one
        whole-forward LoRA set, which the grouping gave these states alone."""
        whole = self.whole_forward_adapters(states[0].request)
        if whole:
            return self.loras.whole_forward(whole)
        rows: dict[str, tuple[list[int], list[float]]] = {}
        start = 0
        for state in states:
            for name, scale in state.request.loras:
                indices, scales = rows.setdefault(name, ([], []))
                indices += range(start, start + state.unet_rows)
                scales += [scale] * state.unet_rows
            start += state.unet_rows
        if not rows:
            return contextlib.nullcontext()
        routes = [
            Route(name, torch.tensor(indices, device=self.device), torch.tensor(scales, device=self.device))
            for name, (indices, scales) in rows.items()
        ]
        return self.loras.router.route(routes)

    def unet_of(self, state: RequestState) -> Any:
        return self.refiner.unet if state.model == "refiner" else self.pipeline.unet

    def _unet(
        self,
        unet: Any,
        states: list[RequestState],
        batch_input: torch.Tensor,
        timesteps: list[torch.Tensor],
        distilled: bool,
    ) -> torch.Tensor:
        hidden, mask = text_context(states)
        return unet(
            batch_input,
            torch.cat(timesteps),
            encoder_hidden_states=hidden,
            encoder_attention_mask=mask,
            timestep_cond=torch.cat([s.guidance_condition for s in states]) if distilled else None,
            added_cond_kwargs={"text_embeds": torch.cat([s.pooled for s in states]),
                               "time_ids": torch.cat([s.time_ids for s in states])},
            return_dict=False,
        )[0]  # fmt: skip

    def _take_rows(self, states: list[RequestState], noise: torch.Tensor) -> None:
        start = 0
        for state in states:
            prediction = noise[start : start + state.unet_rows]
            start += state.unet_rows
            if state.guidance:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + state.request.guidance_scale * (cond - uncond)
            t = state.timesteps[state.stage_step]
            latents = state.scheduler.step(prediction, t, state.latents, **state.step_kwargs, return_dict=False)[0]
            if state.inpainting is not None:
                latents = state.inpainting.blend(latents, state.scheduler, state.timesteps, state.stage_step)
            state.latents = latents
            state.step += 1
            state.forwards += 1
            if state.later is not None and state.stage_step >= len(state.timesteps):
                self.hand_over(state)

    def free_memory(self) -> None:
        """Release what an aborted call left behind (cached CUDA blocks, unreferenced tensors)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def decode(self, states: list[RequestState]) -> list[list[Any] | BaseException]:
        """VAE-decode finished states (same size) in one call: PIL images per state. A state whose decode is
        not finite (NaN/inf: a black image) is decoded again with the VAE in float32; if that fails too, its
        outcome is a :class:`NonFiniteImage` error and the others keep their images."""
        latents = torch.cat([s.latents for s in states])
        decoded = vae.decode(self.pipeline.vae, latents)
        slices, start = [], 0
        for state in states:
            slices.append(slice(start, start + state.images))
            start += state.images
        bad = [i for i, rows in enumerate(slices) if not torch.isfinite(decoded[rows]).all()]
        if bad:
            again = vae.decode(self.pipeline.vae, torch.cat([latents[slices[i]] for i in bad]), force_float32=True)
            decoded, offset = decoded.float(), 0
            for i in bad:
                count = slices[i].stop - slices[i].start
                decoded[slices[i]] = again[offset : offset + count].float()
                offset += count
        result: list[list[Any] | BaseException] = []
        for rows, state in zip(slices, states, strict=True):
            if torch.isfinite(decoded[rows]).all():
                images = self.pipeline.image_processor.postprocess(decoded[rows], output_type="pil")
                result.append([keep_unmasked(image, state.request) for image in images])
            else:
                result.append(NonFiniteImage("the VAE decoded NaN/inf values even in float32 (a black image)"))
        return result


def text_context(states: list[RequestState]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The states' text embeddings as one batch. Requests of different prompt lengths (chunks of 77) are padded
    to the longest, and the padding masked out of cross-attention (``encoder_attention_mask``: the masked keys'
    softmax weights are exactly 0), so each row attends to its own tokens only, as alone; all of one length: no
    mask, today's forward."""
    lengths = [state.embeds.shape[1] for state in states]
    if len(set(lengths)) == 1:
        return torch.cat([state.embeds for state in states]), None
    longest = max(lengths)
    padded, mask = [], []
    for state, length in zip(states, lengths, strict=True):
        embeds = state.embeds
        padded.append(torch.nn.functional.pad(embeds, (0, 0, 0, longest - length)))
        keep = torch.zeros(embeds.shape[0], longest, dtype=embeds.dtype, device=embeds.device)
        keep[:, :length] = 1
        mask.append(keep)
    return torch.cat(padded), torch.cat(mask)
