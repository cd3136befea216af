"""LoRAs per request from the catalogue: diffusers' images, different LoRAs in ONE UNet forward, LRU eviction."""

from __future__ import annotations

import json

import pytest
import torch

from handler.contract.settings import CatalogueLora
from handler.model.loading import load_pipeline
from handler.runtime.core import Core
from tests.helpers import ATTENTION, decode_images, make_lora, max_diff


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return {
        "ink": make_lora(root / "ink", seed=1),
        "film": make_lora(root / "film", seed=2, text_encoder=True),
        "neon": make_lora(root / "neon", seed=3),
    }


def catalogue_core(tiny_model_dir, tiny_settings, loras, max_loaded: int = 4, **changes) -> Core:
    catalogue = {name: CatalogueLora(path, scale=0.8) for name, path in loras.items()}
    limits = tiny_settings.limits.__class__(
        **{**tiny_settings.limits.__dict__, "catalogue": tuple((name, 0.8) for name in loras)}
    )
    settings = tiny_settings.with_changes(
        lora_catalogue=catalogue, max_loaded_loras=max_loaded, limits=limits, **changes
    )
    return Core(load_pipeline(str(tiny_model_dir), tiny_settings), settings)


def reference(tiny_model_dir, tiny_settings, lora_path: str | None, scale: float, prompt: str, seed: int):
    """diffusers' own pipeline with ``load_lora_weights`` + ``set_adapters`` for that LoRA."""
    pipeline = load_pipeline(str(tiny_model_dir), tiny_settings).pipeline
    if lora_path is not None:
        pipeline.load_lora_weights(lora_path, adapter_name="x")
        pipeline.set_adapters(["x"], adapter_weights=[scale])
    generator = [torch.Generator("cpu").manual_seed(seed)]
    arguments = {"num_inference_steps": 4, "guidance_scale": 5.0, "width": 64, "height": 64}
    return pipeline(prompt=prompt, **arguments, generator=generator).images[0]


def rows(*bodies):
    return [{"body": json.dumps(body).encode()} for body in bodies]


@pytest.fixture(scope="module")
def core(tiny_model_dir, tiny_settings, loras):
    return catalogue_core(tiny_model_dir, tiny_settings, loras)


def test_a_lora_request_equals_diffusers_pipeline_with_that_lora(core, tiny_model_dir, tiny_settings, loras):
    for name, scale in (("ink", 0.8), ("film", 1.3)):  # film has text-encoder layers too
        body = {"prompt": "a fox", "seed": 3, "loras": [{"name": name, "scale": scale}]}
        ours = decode_images(core.handle(rows(body))[0])[0]
        expected = reference(tiny_model_dir, tiny_settings, loras[name], scale, "a fox", 3)
        assert max_diff(ours, expected) <= 1, name


def test_requests_with_different_loras_share_each_forward_and_equal_their_solo_images(core):
    bodies = [
        {"prompt": "a fox", "seed": 1, "loras": [{"name": "ink"}]},
        {"prompt": "a cat", "seed": 2, "loras": [{"name": "film", "scale": 0.5}]},
        {"prompt": "a dog", "seed": 3},
        {"prompt": "a cat", "seed": 4, "loras": [{"name": "ink", "scale": -0.5}, {"name": "neon"}]},
    ]
    together = core.handle(rows(*bodies))
    for body, reply in zip(bodies, together, strict=True):
        batch = reply.json()["batch"]
        assert batch["group_requests"] == 4 and batch["unet_forwards"] == 4  # one forward per step, all four
        alone = core.handle(rows(body))[0]
        assert max_diff(decode_images(reply)[0], decode_images(alone)[0]) <= 1
    plain = core.handle(rows({"prompt": "a dog", "seed": 3}))[0]
    assert max_diff(decode_images(together[0])[0], decode_images(plain)[0]) > 1  # the LoRA does change it
    assert core.denoiser.loras.router.routes == []  # nothing left routed after the calls
    assert together[3].json()["parameters"]["loras"] == [{"name": "ink", "scale": -0.5}, {"name": "neon", "scale": 0.8}]


def test_eviction_and_reload_give_identical_images(tiny_model_dir, tiny_settings, loras):
    small = catalogue_core(tiny_model_dir, tiny_settings, loras, max_loaded=1)
    bodies = [{"prompt": "a fox", "seed": 5, "loras": [{"name": name}]} for name in ("ink", "neon", "ink")]
    first, _, again = (small.handle(rows(body))[0] for body in bodies)
    catalogue = small.denoiser.loras
    assert list(catalogue.loaded) == ["ink"] and catalogue.stats.loads == 3 and catalogue.stats.evictions == 2
    assert first.json()["images"] == again.json()["images"]  # the same bytes
    assert small.loaded.pipeline.get_list_adapters() == {"unet": ["ink"]}  # the others deleted


def test_loads_hits_evictions_and_load_time_become_metrics(tiny_model_dir, tiny_settings, loras):
    from handler.runtime.metrics import LORA_EVICTIONS, LORA_HITS, LORA_LOAD_TIME, LORA_LOADS, LORAS_LOADED

    small = catalogue_core(tiny_model_dir, tiny_settings, loras, max_loaded=1)
    seen = []
    for name in ("ink", "ink", "neon"):
        call = small.run(small.parse(rows({"prompt": "m", "loras": [{"name": name}]})))
        seen += small.metrics(call, small.render(call))
    counted = [
        (o.spec, o.labels.get("Lora"), o.value) for o in seen if o.spec in (LORA_LOADS, LORA_HITS, LORA_EVICTIONS)
    ]
    assert counted == [
        (LORA_LOADS, "ink", 1),
        (LORA_HITS, "ink", 1),
        (LORA_LOADS, "neon", 1),
        (LORA_EVICTIONS, "ink", 1),
    ]
    load_times = [o.value for o in seen if o.spec == LORA_LOAD_TIME]
    assert len(load_times) == 2 and all(t > 0 for t in load_times)
    assert [o.value for o in seen if o.spec == LORAS_LOADED] == [1, 1, 1]


def test_in_flight_loras_are_pinned_and_the_cache_shrinks_back_when_they_leave(tiny_model_dir, tiny_settings, loras):
    small = catalogue_core(tiny_model_dir, tiny_settings, loras, max_loaded=1)
    replies = small.handle(rows(*({"prompt": "x", "seed": i, "loras": [{"name": n}]} for i, n in enumerate(loras))))
    assert [r.status for r in replies] == [200, 200, 200]  # all three loaded at once: none evicted while in use
    assert len(small.denoiser.loras.loaded) == 1 and not small.denoiser.loras.pins


def test_a_failing_step_leaves_no_lora_routed_and_the_next_image_is_the_base_one(tiny_model_dir, tiny_settings, loras):
    fragile = catalogue_core(tiny_model_dir, tiny_settings, loras, memory_ceiling_latent_pixels=32 * 32 * 2)
    body = {"prompt": "a dog", "seed": 3}
    failed = fragile.handle(rows({**body, "num_images_per_prompt": 2, "loras": [{"name": "ink"}]}))[0]
    assert failed.status == 507
    assert fragile.denoiser.loras.router.routes == [] and not fragile.denoiser.loras.pins
    base = Core(load_pipeline(str(tiny_model_dir), tiny_settings), tiny_settings).handle(rows(body))[0]
    after = fragile.handle(rows(body))[0]
    assert max_diff(decode_images(after)[0], decode_images(base)[0]) <= 1


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ([{"name": "sketch"}], r"`loras` names 'sketch', which is not in the catalogue; available: ink, film, neon"),
        ([{"name": "ink", "scale": 3}], r"`loras.scale` must be between -2.0 and 2.0 but is 3"),
        ([{"name": "ink"}, {"name": "ink"}], r"`loras` names 'ink' twice"),
        ([{"name": "ink"}] * 4, r"`loras` must be a list of at most 3"),
        ([{"path": "/etc/passwd"}], r"each of `loras` must be \{name, scale\}"),
        ("ink", r"`loras` must be a list"),
    ],
)
def test_bad_lora_choices_are_400s_inside_a_batch(core, choice, message):
    good, bad = core.handle(
        rows({"prompt": "ok", "seed": 1, "loras": [{"name": "neon"}]}, {"prompt": "x", "loras": choice})
    )
    assert good.status == 200 and bad.status == 400
    assert bad.json()["error"]["field"] in ("loras", "loras.scale")
    assert __import__("re").search(message, bad.json()["error"]["message"]), bad.json()["error"]["message"]


def test_conv_and_dora_loras_equal_diffusers_and_dora_gets_forwards_of_its_own(tiny_model_dir, tiny_settings, tmp_path):
    """A LoCon (LoRA on ResNet convolutions too) is routed per row like attention LoRAs; a DoRA adapter cannot be
    (its magnitude rescales the whole output), so PEFT applies it to forwards of its own set's requests."""
    made = {
        "ink": make_lora(tmp_path / "ink", seed=1),
        "locon": make_lora(tmp_path / "locon", seed=6, targets=(*ATTENTION, "conv1", "conv2")),
        "dora": make_lora(tmp_path / "dora", seed=7, targets=("to_q", "to_v", "conv1"), dora=True),
    }
    core = catalogue_core(tiny_model_dir, tiny_settings, made)
    base = decode_images(core.handle(rows({"prompt": "a fox", "seed": 3}))[0])[0]
    for name in ("locon", "dora"):
        body = {"prompt": "a fox", "seed": 3, "loras": [{"name": name, "scale": 0.7}]}
        ours = decode_images(core.handle(rows(body))[0])[0]
        assert max_diff(ours, reference(tiny_model_dir, tiny_settings, made[name], 0.7, "a fox", 3)) <= 1, name
        assert max_diff(ours, base) > 1, name  # it does change the image
    assert core.denoiser.loras.whole_forward_names == {"dora"}
    bodies = [
        {"prompt": "a fox", "seed": 1, "loras": [{"name": "locon"}]},
        {"prompt": "a cat", "seed": 2, "loras": [{"name": "dora"}, {"name": "ink", "scale": 1.5}]},
        {"prompt": "a dog", "seed": 3},
        {"prompt": "a cat", "seed": 4, "loras": [{"name": "ink"}]},
        {"prompt": "a cow", "seed": 5, "loras": [{"name": "dora"}, {"name": "ink", "scale": 1.5}]},
    ]
    together = core.handle(rows(*bodies))
    groups = [reply.json()["batch"]["group_requests"] for reply in together]
    assert groups == [3, 2, 3, 3, 2]  # routed LoRAs and none share forwards; the DoRA set has its own
    for body, reply in zip(bodies, together, strict=True):
        assert max_diff(decode_images(reply)[0], decode_images(core.handle(rows(body))[0])[0]) <= 1, body
    pipeline = core.loaded.pipeline
    assert all(not layer.merged and layer.disable_adapters for layer in core.denoiser.loras._lora_layers())
    ink = next(m for m in core.denoiser.loras._lora_layers() if "ink" in m.scaling)
    assert ink.scaling["ink"] == 1.0  # the DoRA set's set_adapters(ink=1.5) did not stay behind
    assert set(pipeline.get_list_adapters()["unet"]) == {"ink", "locon", "dora"}


def test_grouped_lora_batching_gives_each_lora_set_its_own_forwards_and_the_same_images(
    core, tiny_model_dir, tiny_settings, loras
):
    grouped = catalogue_core(tiny_model_dir, tiny_settings, loras, lora_batching="grouped")
    bodies = [
        {"prompt": "a fox", "seed": 1, "loras": [{"name": "ink"}]},
        {"prompt": "a cat", "seed": 2, "loras": [{"name": "film", "scale": 0.5}]},
        {"prompt": "a dog", "seed": 3},
        {"prompt": "a cow", "seed": 4, "loras": [{"name": "ink"}]},
    ]
    replies, routed = grouped.handle(rows(*bodies)), core.handle(rows(*bodies))
    assert [r.json()["batch"]["group_requests"] for r in replies] == [2, 1, 1, 2]  # the two ink requests together
    assert [r.json()["batch"]["group_requests"] for r in routed] == [4, 4, 4, 4]
    for ours, theirs in zip(replies, routed, strict=True):
        assert max_diff(decode_images(ours)[0], decode_images(theirs)[0]) <= 1


def test_a_failing_whole_forward_step_leaves_lora_disabled_and_the_scalings_restored(
    tiny_model_dir, tiny_settings, tmp_path
):
    made = {"ink": make_lora(tmp_path / "ink", seed=1), "dora": make_lora(tmp_path / "dora", seed=7, dora=True)}
    fragile = catalogue_core(tiny_model_dir, tiny_settings, made, memory_ceiling_latent_pixels=32 * 32 * 2)
    body = {"prompt": "a dog", "seed": 3}
    lora_set = [{"name": "dora"}, {"name": "ink", "scale": 1.5}]
    failed = fragile.handle(rows({**body, "num_images_per_prompt": 2, "loras": lora_set}))[0]
    assert failed.status == 507
    layers = list(fragile.denoiser.loras._lora_layers())
    assert all(layer.disable_adapters for layer in layers) and not fragile.denoiser.loras.pins
    assert {layer.scaling["ink"] for layer in layers if "ink" in layer.scaling} == {1.0}
    base = Core(load_pipeline(str(tiny_model_dir), tiny_settings), tiny_settings).handle(rows(body))[0]
    assert max_diff(decode_images(fragile.handle(rows(body))[0])[0], decode_images(base)[0]) <= 1


@pytest.mark.parametrize(
    "wrong",
    [{"sampler": "ddim", "schedule": "karras"}, {"sampler": "euler", "eta": 0.5}, {"prompt": " ".join(["ink"] * 90)}],
)
def test_a_request_the_contract_refuses_loads_no_lora(tiny_model_dir, tiny_settings, loras, wrong):
    """Every check runs at parse, before admission: a refused request with a LoRA never loads (nor evicts) it."""
    fresh = catalogue_core(tiny_model_dir, tiny_settings, loras, max_loaded=1)
    reply = fresh.handle(rows({"prompt": "a fox", "loras": [{"name": "ink"}], **wrong}))[0]
    assert reply.status == 400, reply.json()
    catalogue = fresh.denoiser.loras
    assert (catalogue.stats.loads, catalogue.stats.evictions, list(catalogue.loaded)) == (0, 0, [])
