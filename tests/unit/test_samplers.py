"""Samplers and schedules per request (handler/contract/samplers.py): the pipeline's images, shared forwards,
clear 400s."""

import inspect
import json

import diffusers
import pytest

from handler.contract.parse import parse_request
from handler.contract.samplers import SAMPLER_NAMES, SAMPLERS, SCHEDULERS, SCHEDULES
from handler.model.scheduling import build_scheduler
from handler.runtime.core import Core
from tests.helpers import make_engine, max_diff, pipeline_image


@pytest.fixture
def make(tiny_settings):
    def make_request(**fields):
        body = {"prompt": "a red cat", "seed": 7, "num_inference_steps": 4, **fields}
        return parse_request(body, tiny_settings.limits, tiny_settings.defaults)

    return make_request


@pytest.fixture(scope="module")
def engine(tiny_loaded):
    return make_engine(tiny_loaded)


def reference_image(loaded, monkeypatch, sampler, schedule="default", eta=None, **call):
    """diffusers' own StableDiffusionXLPipeline with that sampler's scheduler and a per-image generator list."""
    pipeline = loaded.pipeline
    spec = SAMPLERS[sampler]
    scheduler = getattr(diffusers, spec.scheduler).from_config(
        pipeline.scheduler.config, **spec.options, **SCHEDULES[schedule]
    )
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "scheduler", scheduler)
        return pipeline_image(pipeline, **({} if eta is None else {"eta": eta}), **call)


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_each_sampler_makes_the_pipelines_image(engine, tiny_loaded, make, monkeypatch, sampler):
    eta = 0.3 if sampler == "tcd" else None  # the pipeline passes eta=0 unless told; TCD's own default is 0.3
    ours = engine.generate([make(sampler=sampler, eta=eta)])[0][0]
    assert max_diff(ours, reference_image(tiny_loaded, monkeypatch, sampler, eta=eta)) <= 1


@pytest.mark.parametrize(
    ("sampler", "schedule"), [("dpmpp_2m", "karras"), ("euler", "trailing"), ("unipc", "exponential")]
)
def test_schedules_make_the_pipelines_image(engine, tiny_loaded, make, monkeypatch, sampler, schedule):
    ours = engine.generate([make(sampler=sampler, schedule=schedule)])[0][0]
    assert max_diff(ours, reference_image(tiny_loaded, monkeypatch, sampler, schedule)) <= 1


def test_a_batch_mixing_samplers_gives_each_request_its_solo_image(engine, make):
    requests = [
        make(sampler="heun", seed=1),
        make(sampler="ddim", seed=2, num_inference_steps=6),
        make(sampler="euler_a", seed=3),
        make(sampler="dpmpp_2m", schedule="karras", seed=4, guidance_scale=1.0),
    ]
    together = engine.generate(requests)
    for request, images in zip(requests, together, strict=True):
        assert max_diff(images[0], engine.generate([request])[0][0]) <= 1, request.sampler


@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m_sde", "lcm"])
def test_image_i_equals_seed_plus_i_alone_for_samplers_that_draw_noise(engine, make, sampler):
    pair = engine.generate([make(sampler=sampler, seed=10, num_images_per_prompt=2)])[0]
    assert max_diff(pair[1], engine.generate([make(sampler=sampler, seed=11)])[0][0]) <= 1


def test_second_order_samplers_report_the_forwards_they_really_run(core):
    row = {"body": json.dumps({"prompt": "x", "sampler": "heun", "num_inference_steps": 5, "stream": True}).encode()}
    sent = []
    reply = core.handle([row], emit=sent.append)[0]
    events = [json.loads(line) for chunk in sent for line in chunk[0].splitlines()]
    assert [e["step"] for e in events] == list(range(1, 10)) and events[0]["total_steps"] == 9
    assert json.loads(reply.body.splitlines()[-1])["batch"]["unet_forwards"] == 9  # 2N - 1


def test_a_trailing_one_step_request_starts_at_t_999(tiny_loaded, make):
    scheduler = build_scheduler("euler", "trailing", None, tiny_loaded.pipeline.scheduler)
    scheduler.set_timesteps(1)
    assert scheduler.timesteps.tolist() == [999]
    assert tiny_loaded.pipeline.scheduler.config.timestep_spacing == "leading"  # the shared one untouched


def test_bad_sampling_values_are_400s_naming_field_and_value_beside_good_requests(core):
    bodies = [
        {"prompt": "good", "seed": 1},
        {"prompt": "x", "sampler": "euler_ancestral"},
        {"prompt": "x", "sampler": "ddim", "schedule": "karras"},
        {"prompt": "x", "sampler": "euler", "eta": 0.5},
        {"prompt": "x", "schedule": "cosine"},
        {"prompt": "good too", "sampler": "heun", "seed": 2},
    ]
    replies = core.handle([{"body": json.dumps(b).encode()} for b in bodies])
    assert [r.status for r in replies] == [200, 400, 400, 400, 400, 200]
    errors = [r.json()["error"] for r in replies[1:5]]
    assert [(e["field"], e["value"]) for e in errors] == [
        ("sampler", "euler_ancestral"),
        ("schedule", "karras"),
        ("eta", 0.5),
        ("schedule", "cosine"),
    ]
    assert "`schedule` 'karras' does not work with `sampler` 'ddim'" in errors[1]["message"]
    assert "trailing" in errors[1]["message"]  # what it does work with


@pytest.mark.parametrize("sampler", ["lcm", "tcd"])
def test_more_steps_than_a_distilled_samplers_schedule_is_a_400_not_a_failed_generation(tiny_loaded, tiny_settings,
                                                                                       sampler):  # fmt: skip
    limits = tiny_settings.limits.__class__(**{**tiny_settings.limits.__dict__, "max_inference_steps": 100})
    wide = Core(tiny_loaded, tiny_settings.with_changes(limits=limits))
    bodies = [{"prompt": "x", "sampler": sampler, "num_inference_steps": steps} for steps in (50, 51)]
    replies = wide.handle([{"body": json.dumps(b).encode()} for b in bodies])
    assert [r.status for r in replies] == [200, 400]
    error = replies[1].json()["error"]
    assert (
        error["field"] == "num_inference_steps"
        and f"more than `sampler` '{sampler}' takes: at most 50" in (error["message"])
    )


def test_limits_samplers_narrows_the_choice(tiny_loaded, tiny_settings):
    from handler.contract.settings import HandlerSettings

    yaml_config = {"handler": {"limits": {"samplers": ["euler", "lcm"]}}}
    narrowed = Core(tiny_loaded, tiny_settings.with_changes(limits=HandlerSettings.from_yaml(yaml_config).limits))
    reply = narrowed.handle([{"body": b'{"prompt": "x", "sampler": "heun"}'}])[0]
    assert reply.status == 400 and "must be one of euler, lcm" in reply.json()["error"]["message"]


def test_the_contracts_scheduler_traits_are_diffusers_own():
    """handler.contract.samplers.SCHEDULERS (torch-free, so every front door can check a request) says what
    each diffusers class's signatures say: the schedules whose options its constructor takes, and eta."""
    for name, traits in SCHEDULERS.items():
        cls = getattr(diffusers, name)
        parameters = inspect.signature(cls.__init__).parameters
        schedules = tuple(s for s, options in SCHEDULES.items() if all(key in parameters for key in options))
        assert traits.schedules == schedules, name
        assert traits.eta == ("eta" in inspect.signature(cls.step).parameters), name
        steps = parameters.get("original_inference_steps")  # LCM / TCD: set_timesteps refuses more
        assert traits.max_steps == (steps.default if steps else None), name
    assert {spec.scheduler for spec in SAMPLERS.values()} <= set(SCHEDULERS)
    assert "karras" not in SCHEDULERS["DDIMScheduler"].schedules


def test_no_request_changes_the_pipelines_scheduler(core, tiny_loaded):
    before = dict(tiny_loaded.pipeline.scheduler.config)
    core.handle([{"body": json.dumps({"prompt": "x", "sampler": s}).encode()} for s in ("heun", "lcm")])
    assert dict(tiny_loaded.pipeline.scheduler.config) == before


def test_the_samplers_really_differ(engine, make):
    images = {name: engine.generate([make(sampler=name)])[0][0] for name in ("euler", "euler_a", "heun", "ddim", "lcm")}
    assert all(max_diff(images["euler"], image) > 1 for name, image in images.items() if name != "euler")
