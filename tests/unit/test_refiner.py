"""The SDXL refiner: the base + refiner ensemble equals diffusers' two-pipeline run, and requests in the base
stage and in the refiner stage share a base forward and a refiner forward in the same handler call."""

from __future__ import annotations

import json

import diffusers
import pytest
import torch

from handler.contract.samplers import SAMPLERS
from handler.model.loading import load_pipeline
from handler.model.tiny_model import save_tiny_pipeline
from handler.runtime.core import Core
from tests.helpers import decode_images, max_diff
from tests.images import b64, half_mask, picture


@pytest.fixture(scope="module")
def refiner_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-refiner", refiner=True)


def refiner_settings(tiny_settings, refiner_dir, continuous: bool = False, **defaults):
    limits = tiny_settings.limits.__class__(**{**tiny_settings.limits.__dict__, "refiner": True})
    return tiny_settings.with_changes(
        refiner_path=str(refiner_dir),
        limits=limits,
        continuous=continuous,
        defaults=tiny_settings.defaults.__class__(**{**tiny_settings.defaults.__dict__, **defaults}),
    )


@pytest.fixture(scope="module")
def core(tiny_model_dir, tiny_settings, refiner_dir):
    settings = refiner_settings(tiny_settings, refiner_dir)
    return Core(load_pipeline(str(tiny_model_dir), settings), settings)


IMAGE, MASK = b64(picture(64, 64)), b64(half_mask(64, 64))


def rows(*bodies):
    return [{"body": json.dumps(body).encode()} for body in bodies]


def ensemble(tiny_model_dir, refiner_dir, tiny_settings, prompt, seed, steps, denoising_end, sampler=None, **call):
    """diffusers' ensemble of expert denoisers: base with ``denoising_end`` and latent output, then the refiner
    (sharing text_encoder_2 and the VAE) with ``denoising_start`` on those latents; one generator for both."""
    base = load_pipeline(str(tiny_model_dir), tiny_settings).pipeline
    refiner = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(
        str(refiner_dir), text_encoder_2=base.text_encoder_2, vae=base.vae
    )
    if sampler is not None:
        spec = SAMPLERS[sampler]
        for pipeline in (base, refiner):
            pipeline.scheduler = getattr(diffusers, spec.scheduler).from_config(
                pipeline.scheduler.config, **spec.options
            )
    generator = [torch.Generator("cpu").manual_seed(seed)]
    shared = {"num_inference_steps": steps, "guidance_scale": 5.0, "generator": generator}
    if "image" in call:
        image, strength = call.pop("image"), call.pop("strength")
        base = diffusers.StableDiffusionXLImg2ImgPipeline(**base.components)
        call = {"image": image, "strength": strength}
    else:
        call = {"width": 64, "height": 64}
    latents = base(prompt, **shared, **call, denoising_end=denoising_end, output_type="latent").images
    return refiner(prompt, **shared, denoising_start=denoising_end, image=latents).images[0]


@pytest.mark.parametrize(
    ("steps", "denoising_end", "sampler"),
    [(4, 0.8, None), (6, 0.5, None), (6, 0.7, "dpmpp_2m"), (5, 0.6, "euler_a")],
)
def test_base_plus_refiner_equals_diffusers_ensemble(core, tiny_model_dir, refiner_dir, tiny_settings, steps,
                                                     denoising_end, sampler):  # fmt: skip
    body = {"prompt": "a cat", "seed": 7, "num_inference_steps": steps, "denoising_end": denoising_end}
    reply = core.handle(rows({**body, **({"sampler": sampler} if sampler else {})}))[0]
    assert reply.status == 200, reply.json()
    expected = ensemble(tiny_model_dir, refiner_dir, tiny_settings, "a cat", 7, steps, denoising_end, sampler)
    ours = decode_images(reply)[0]
    assert max_diff(ours, expected) <= 1
    if denoising_end <= 0.7:  # (at 0.8 of 4 steps the refiner's one step is t=1: almost no change)
        base_only = decode_images(core.handle(rows({**body, "denoising_end": None}))[0])[0]
        assert max_diff(ours, base_only) > 1  # the refiner did run
    assert reply.json()["parameters"]["aesthetic_score"] == 6.0


def test_img2img_with_the_refiner_equals_diffusers(core, tiny_model_dir, refiner_dir, tiny_settings):
    image = picture(64, 64)
    body = {"prompt": "a cat", "seed": 2, "num_inference_steps": 8, "denoising_end": 0.6}
    reply = core.handle(rows({**body, "image": b64(image), "strength": 0.75}))[0]
    expected = ensemble(tiny_model_dir, refiner_dir, tiny_settings, "a cat", 2, 8, 0.6, image=image, strength=0.75)
    assert max_diff(decode_images(reply)[0], expected) <= 1


def test_aesthetic_scores_are_the_refiners_last_time_id(core):
    """(On the tiny random UNet their effect on the image is below 1/255, so the conditioning is checked.)"""
    body = {"prompt": "a cat", "seed": 7, "denoising_end": 0.5, "aesthetic_score": 2, "negative_aesthetic_score": 7}
    state = core.denoiser.start(core.parse_row({"body": json.dumps(body).encode()}, None))
    assert state.later.time_ids.tolist() == [[64, 64, 0, 0, 7], [64, 64, 0, 0, 2]]  # [negative, positive] rows
    assert state.time_ids.shape[-1] == 6 and state.total_steps == 4 and len(state.timesteps) == 2


@pytest.mark.parametrize("continuous", [False, True])
def test_base_and_refiner_stages_share_their_forwards_in_one_call_and_equal_solo(
    tiny_model_dir, tiny_settings, refiner_dir, continuous
):
    """Different hand-over points, step counts and prompt lengths: in the same step some requests are in the
    refiner stage (one refiner forward for them), the others in the base stage (one base forward); each equals
    its solo run."""
    from tests.unit.test_text_encoding import prompt_of

    settings = refiner_settings(tiny_settings, refiner_dir, continuous=continuous).with_changes(overlap_side_work=False)
    core = Core(load_pipeline(str(tiny_model_dir), settings), settings)
    bodies = [
        {"prompt": "a cat", "seed": 1, "num_inference_steps": 6, "denoising_end": 0.5},
        # a weighted 3-chunk prompt beside 1-chunk ones: both models' forwards pad and mask it
        {
            "prompt": "(a dog:1.3) " + prompt_of(160),
            "prompt_syntax": "a1111",
            "seed": 2,
            "num_inference_steps": 6,
            "denoising_end": 0.8,
        },
        {"prompt": "a sea", "seed": 3, "num_inference_steps": 6},
        {
            "prompt": "a sky++ (at night)0.8",
            "prompt_syntax": "compel",
            "seed": 4,
            "num_inference_steps": 4,
            "denoising_end": 0.5,
            "sampler": "dpmpp_2m",
        },  # compel's refiner half: the second encoder alone
    ]
    forwards = []
    original = core.denoiser._unet

    def counting(unet, states, *args):
        forwards.append((states[0].model, len(states)))
        return original(unet, states, *args)

    core.denoiser._unet = counting
    together = serve(core, bodies, continuous)
    core.denoiser._unet = original
    # #1 hands over after 3 of its 6 steps (cut at t=500), #4 after 2 of 4, #2 after 5 of 6; #3 never:
    # step 3 is one base forward for #2 and #3 and one refiner forward for #1 and #4, and so on.
    assert forwards[:2] == [("base", 4), ("base", 4)], forwards
    assert sorted(forwards[2:4]) == [("base", 2), ("refiner", 2)], forwards
    assert ("refiner", 1) not in forwards[:6] and len(forwards) < 2 * 6
    for body, reply in zip(bodies, together, strict=True):
        assert reply.status == 200
        alone = serve(core, [body], continuous)[0]
        assert max_diff(decode_images(reply)[0], decode_images(alone)[0]) <= 1, body


def serve(core, bodies, continuous):
    """Static: one handler call. Continuous: TorchServe's frontend loop (tests/unit/test_continuous.py)."""
    if not continuous:
        return core.handle(rows(*bodies))
    from tests.helpers import Frontend

    frontend = Frontend(core)
    responses = [frontend.submit(body) for body in bodies]
    frontend.run_until_idle()
    return responses


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"denoising_end": 1.0}, "denoising_end", r"between 0.0 and 1.0 \(exclusive\) but is 1.0"),
        ({"denoising_end": "0.8"}, "denoising_end", r"must be a number"),
        ({"denoising_end": 0.1}, "denoising_end", r"leaves 0 of the 4 steps to the base and 4 to the refiner"),
        ({"denoising_end": 0.999}, "denoising_end", r"leaves 4 of the 4 steps to the base and 0 to the refiner"),
        ({"aesthetic_score": 5}, "aesthetic_score", "`aesthetic_score` applies only with `denoising_end`"),
        ({"denoising_end": 0.8, "aesthetic_score": 11}, "aesthetic_score", r"between 0.0 and 10.0 but is 11"),
        ({"denoising_end": 0.8, "image": IMAGE, "mask_image": MASK}, "denoising_end", r"does not apply to inpainting"),
    ],
)
def test_bad_refiner_fields_are_400s_inside_a_batch(core, body, field, message):
    good, bad = core.handle(rows({"prompt": "ok", "seed": 1, "denoising_end": 0.8}, {"prompt": "x", **body}))
    assert good.status == 200 and bad.status == 400
    error = bad.json()["error"]
    assert error["field"] == field and __import__("re").search(message, error["message"]), error


def test_denoising_end_without_a_refiner_is_a_400(tiny_loaded, tiny_settings):
    reply = Core(tiny_loaded, tiny_settings).handle(rows({"prompt": "x", "denoising_end": 0.8}))[0]
    assert reply.status == 400 and "this model has none (handler.refiner_path)" in reply.json()["error"]["message"]


def test_a_yaml_default_refines_text_and_img2img_but_not_inpainting(tiny_model_dir, tiny_settings, refiner_dir):
    settings = refiner_settings(tiny_settings, refiner_dir, denoising_end=0.8)
    core = Core(load_pipeline(str(tiny_model_dir), settings), settings)
    image = b64(picture(64, 64))
    text, inpaint = core.handle(
        rows({"prompt": "a"}, {"prompt": "a", "image": image, "mask_image": b64(half_mask(64, 64))})
    )
    assert text.json()["parameters"]["denoising_end"] == 0.8
    assert inpaint.status == 200 and inpaint.json()["parameters"]["denoising_end"] is None
