"""The AUTOMATIC1111 web UI API subset (``/sdapi/v1/txt2img``, ``/img2img``) on our contract: its fields mapped
to a /predictions body, our answers in its shapes. Torch-free; the routes: jobs/routers/a1111.py.

Every field A1111's API takes is in one of four lists below: mapped to ours; accepted because it never changes
the image (saving, scripts left empty); accepted only at its neutral value (``restore_faces: false``,
``s_noise: 1``, ... : anything else would change the image in A1111 and is a 400 naming it); or, for inpainting,
the mask options we follow only one way (``mask_blur: 0``, ``inpainting_fill: 1`` original,
``inpaint_full_res: false``). A field in none of them is a 400 naming it, never ignored.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

from handler.contract.a1111 import A1111_SAMPLERS, A1111_SCHEDULES, infotext, sampler_label
from handler.contract.errors import InvalidRequest, ServingError
from handler.contract.samplers import SAMPLERS

SAMPLER_NAMES, SCHEDULERS = A1111_SAMPLERS, A1111_SCHEDULES  # one table: the contract's (infotext uses it too)
ANCESTRAL = ("euler_a", "dpm2_a")  # A1111's eta scales their noise (1 = theirs and ours)
MAPPED = {"prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "num_inference_steps",
          "cfg_scale": "guidance_scale", "width": "width", "height": "height", "seed": "seed",
          "denoising_strength": "strength", "init_images": "image", "mask": "mask_image"}  # fmt: skip
MAPPED_TOO = ("batch_size", "n_iter", "sampler_name", "sampler_index", "scheduler", "eta", "resize_mode",
              "inpainting_mask_invert")  # fmt: skip
NO_EFFECT = (
    "send_images", "save_images", "do_not_save_samples", "do_not_save_grid", "override_settings_restore_afterwards",
    "include_init_images", "image_cfg_scale", "comments", "disable_extra_networks", "infotext", "force_task_id",
    "subseed", "inpaint_full_res_padding",
    # hires fix's own: used only with `enable_hr`, which must be false
    "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name",
    "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt", "hr_additional_modules",
)  # fmt: skip
NEUTRAL = {  # field: the values that leave A1111's image as ours
    "enable_hr": (False, None), "restore_faces": (False, None), "tiling": (False, None),
    "subseed_strength": (0, None), "styles": ([], None), "override_settings": ({}, None),
    "alwayson_scripts": ({}, None), "script_name": (None, ""), "script_args": ([], None), "s_churn": (0, None),
    "s_tmax": (0, None), "s_tmin": (0, None), "s_noise": (1, None), "firstphase_width": (0, None),
    "firstphase_height": (0, None), "initial_noise_multiplier": (1, None), "refiner_checkpoint": (None, ""),
    "refiner_switch_at": (None,), "seed_resize_from_h": (0, -1, None), "seed_resize_from_w": (0, -1, None),
}  # fmt: skip
INPAINT_ONLY = {"mask_blur": (0,), "inpainting_fill": (1,), "inpaint_full_res": (False, 0)}  # with a mask
RESIZE_MODES = {0: "resize", 1: "crop", 2: "fill"}  # A1111's 3 (latent upscale) has no equivalent
OUR_NAMES = {**{ours: theirs for theirs, ours in MAPPED.items()}, "num_images_per_prompt": "batch_size",
             "sampler": "sampler_name", "schedule": "scheduler"}  # fmt: skip


def generation_body(body: Any, img2img: bool) -> tuple[dict[str, Any], int]:
    """An A1111 txt2img / img2img body -> (our /predictions payload, ``n_iter``: how many batches it asked for).

    Raises:
        InvalidRequest: naming A1111's field.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    known = set(MAPPED) | set(MAPPED_TOO) | set(NO_EFFECT) | set(NEUTRAL) | set(INPAINT_ONLY)
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidRequest(f"unsupported field(s) {', '.join(unknown)}: this server does not do what they ask",
                             field=unknown[0], value=unknown[0])  # fmt: skip
    for name, neutral in NEUTRAL.items():
        if name in body and body[name] not in neutral:
            raise InvalidRequest(f"`{name}` {body[name]!r} changes the image in A1111 and this server does not do it; "
                                 f"send {neutral[0]!r} or leave it out", field=name, value=body[name])  # fmt: skip
    if not img2img and ("init_images" in body or "mask" in body):
        name = "init_images" if "init_images" in body else "mask"
        raise InvalidRequest(f"`{name}` belongs to /sdapi/v1/img2img", field=name)
    payload = {MAPPED[name]: value for name, value in body.items() if name in MAPPED}
    if not img2img:
        payload.pop("strength", None)  # txt2img's denoising_strength is for hires fix, which is off
    if payload.get("seed") == -1:
        del payload["seed"]  # A1111's random seed
    if "negative_prompt" in payload and payload["negative_prompt"] is None:
        payload["negative_prompt"] = ""
    batches = _count(body, "n_iter")
    payload["num_images_per_prompt"] = _count(body, "batch_size") * batches
    payload.update(_sampling(body))
    if img2img:
        payload.update(_image_inputs(body))
    return payload, batches


def _count(body: dict[str, Any], name: str) -> int:
    value = body.get(name, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"`{name}` must be a positive integer but is {value!r}", field=name, value=value)
    return value


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    name = body.get("sampler_name") or body.get("sampler_index")
    field = "sampler_name" if body.get("sampler_name") else "sampler_index"
    scheduler = body.get("scheduler") or "automatic"
    out: dict[str, Any] = {}
    if name:
        if isinstance(name, str) and name.endswith(" Karras") and name[: -len(" Karras")] in SAMPLER_NAMES:
            name, scheduler = name[: -len(" Karras")], "karras" if scheduler == "automatic" else scheduler
        sampler = SAMPLER_NAMES.get(name, name if name in SAMPLERS else None)
        if sampler is None:
            names = ", ".join([*SAMPLER_NAMES, *SAMPLERS])
            raise InvalidRequest(f"`{field}` {name!r} is not a sampler of this server; one of: {names}",
                                 field=field, value=name)  # fmt: skip
        out["sampler"] = sampler
    by_label = {label.lower(): key for key, (label, _) in SCHEDULERS.items()}
    key = scheduler.lower() if isinstance(scheduler, str) else None
    key = key if key in SCHEDULERS else by_label.get(key or "")
    if key is None:
        raise InvalidRequest(f"`scheduler` {scheduler!r} is not one of {', '.join(SCHEDULERS)}", field="scheduler",
                             value=scheduler)  # fmt: skip
    out["schedule"] = SCHEDULERS[key][1]
    eta = body.get("eta")
    if eta is not None:
        if out.get("sampler") in ("ddim", "tcd"):
            out["eta"] = eta
        elif out.get("sampler") in ANCESTRAL and eta != 1:
            raise InvalidRequest(f"`eta` {eta!r} changes an ancestral sampler's noise; this server's is 1",
                                 field="eta", value=eta)  # fmt: skip
    return out


def _image_inputs(body: dict[str, Any]) -> dict[str, Any]:
    images = body.get("init_images")
    if not isinstance(images, list) or len(images) != 1:
        raise InvalidRequest("`init_images` must be a list of exactly one base64 image", field="init_images")
    out: dict[str, Any] = {"image": images[0]}
    mode = body.get("resize_mode", 0)
    if mode not in RESIZE_MODES:
        raise InvalidRequest(f"`resize_mode` must be 0, 1 or 2 but is {mode!r}", field="resize_mode", value=mode)
    out["resize_mode"] = RESIZE_MODES[mode]
    mask = body.get("mask")
    if mask is None:
        return out
    for name, allowed in INPAINT_ONLY.items():
        if name in body and body[name] not in allowed:
            raise InvalidRequest(f"with a `mask`, `{name}` must be {allowed[0]!r} (this server's inpainting) but is "
                                 f"{body[name]!r}", field=name, value=body[name])  # fmt: skip
    invert = body.get("inpainting_mask_invert", 0)
    if invert not in (0, 1):
        raise InvalidRequest("`inpainting_mask_invert` must be 0 or 1", field="inpainting_mask_invert", value=invert)
    out["mask_image"] = _inverted(mask) if invert else mask
    return out


def _inverted(mask: Any) -> str:
    from PIL import Image, ImageOps

    try:
        image = Image.open(io.BytesIO(base64.b64decode(str(mask).split(",")[-1])))
        image.load()
    except Exception as exc:
        raise InvalidRequest(f"`mask` is not a readable image: {exc}", field="mask") from None
    out = io.BytesIO()
    ImageOps.invert(image.convert("L")).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def renamed(exc: ServingError) -> ServingError:
    """Our contract's error, naming A1111's field where it has another name (``steps``, not
    ``num_inference_steps``)."""
    theirs = OUR_NAMES.get(exc.field or "")
    if theirs is None or theirs == exc.field:
        return exc
    exc.message = exc.message.replace(f"`{exc.field}`", f"`{theirs}`")
    exc.field = theirs
    return exc


def info(record: dict[str, str], parameters: dict[str, Any], batches: int, model: dict | None = None) -> str:
    """A1111's ``info``: a JSON string with the seeds and settings of the images."""
    seeds = json.loads(record["seeds"])
    sampler = sampler_label(parameters["sampler"])
    return json.dumps({
        "prompt": parameters["prompt"], "all_prompts": [parameters["prompt"]] * len(seeds),
        "negative_prompt": parameters["negative_prompt"],
        "all_negative_prompts": [parameters["negative_prompt"]] * len(seeds),
        "seed": seeds[0], "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * len(seeds),
        "width": parameters["width"], "height": parameters["height"], "sampler_name": sampler,
        "cfg_scale": parameters["guidance_scale"], "steps": parameters["num_inference_steps"],
        "batch_size": len(seeds) // batches, "n_iter": batches, "denoising_strength": parameters.get("strength"),
        "infotexts": [infotext(parameters, seed, model) for seed in seeds],
        "job_id": record["id"],
    })  # fmt: skip


def error_body(exc: ServingError) -> dict[str, Any]:
    """A1111's API error object (modules/api/api.py), with the field it names."""
    return {"error": type(exc).__name__, "detail": exc.message, "body": "", "errors": exc.message, "field": exc.field}
