"""Fast presets (config/sdxl-turbo.yaml, config/sdxl-lightning.yaml) and replacement UNets, on tiny equivalents."""

import json

import pytest
import torch
import yaml

from handler.contract.settings import HandlerSettings
from handler.model.loading import load_pipeline
from handler.runtime.core import Core
from tests.conftest import REPO_ROOT


def preset(name: str, **handler_changes) -> HandlerSettings:
    config = yaml.safe_load((REPO_ROOT / "config" / name).read_text())
    config["handler"].update(handler_changes)
    return HandlerSettings.from_yaml(config)


def rows(*bodies):
    return [{"body": json.dumps(body).encode()} for body in bodies]


def test_the_turbo_preset_serves_one_trailing_step_and_refuses_what_turbo_cannot_do(tiny_loaded):
    core = Core(tiny_loaded, preset("sdxl-turbo.yaml"))
    replies = core.handle(
        rows(
            {"prompt": "a fox", "seed": 1},
            {"prompt": "a fox", "num_inference_steps": 50},
            {"prompt": "a fox", "width": 1024, "height": 1024},
            {"prompt": "a fox", "sampler": "heun"},
        )
    )
    assert [r.status for r in replies] == [200, 400, 400, 400]
    assert [r.json()["error"]["field"] for r in replies[1:]] == ["num_inference_steps", "width", "sampler"]
    parameters = replies[0].json()["parameters"]
    assert (parameters["num_inference_steps"], parameters["guidance_scale"]) == (1, 0.0)
    assert (parameters["sampler"], parameters["schedule"], parameters["width"]) == ("euler_a", "trailing", 512)
    assert replies[0].json()["batch"]["unet_forwards"] == 1
    state = core.denoiser.start(core.parse_row(rows({"prompt": "x"})[0], None))
    assert state.scheduler.timesteps.tolist() == [999] and not state.guidance


def test_the_lightning_preset_defaults_to_4_trailing_euler_steps_and_refuses_30():
    settings = preset("sdxl-lightning.yaml")
    from handler.contract.parse import parse_request

    request = parse_request({"prompt": "x"}, settings.limits, settings.defaults)
    assert (request.num_inference_steps, request.sampler, request.schedule) == (4, "euler", "trailing")
    with pytest.raises(Exception, match="`num_inference_steps` must be between 1 and 8 but is 30"):
        parse_request({"prompt": "x", "num_inference_steps": 30}, settings.limits, settings.defaults)


def test_a_unet_safetensors_file_replaces_the_models_unet(tiny_model_dir, tiny_settings, tmp_path):
    from safetensors.torch import save_file

    from handler.model.tiny_model import build_tiny_pipeline

    other = build_tiny_pipeline(seed=1).unet  # another "distillation" of the same architecture
    save_file(other.state_dict(), tmp_path / "unet.safetensors")
    loaded = load_pipeline(
        str(tiny_model_dir), tiny_settings.with_changes(unet_path=str(tmp_path / "unet.safetensors"))
    )
    for name, tensor in other.state_dict().items():
        assert torch.equal(loaded.pipeline.unet.state_dict()[name], tensor), name


def test_a_distilled_unet_folder_loads_and_serves(tiny_model_dir, tiny_settings, tmp_path):
    from handler.model.tiny_model import build_tiny_pipeline

    build_tiny_pipeline(time_cond_proj_dim=32).unet.save_pretrained(tmp_path / "lcm-unet")
    settings = tiny_settings.with_changes(unet_path=str(tmp_path / "lcm-unet"))
    core = Core(load_pipeline(str(tiny_model_dir), settings), settings)
    assert core.loaded.pipeline.unet.config.time_cond_proj_dim == 32
    reply = core.handle(rows({"prompt": "a fox", "sampler": "lcm", "guidance_scale": 6.0}))[0]
    assert reply.status == 200 and reply.json()["batch"]["unet_forwards"] == 4


def make_tiny_lora(folder):
    """A tiny random LoRA on the tiny UNet's attention, saved as diffusers saves LoRAs (peft under the hood)."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from handler.model.tiny_model import build_tiny_pipeline

    unet = build_tiny_pipeline().unet
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    unet.add_adapter(config)
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet))
    return folder


def test_a_lora_fused_at_load_gives_the_image_of_the_pipeline_with_that_lora(tiny_model_dir, tiny_settings, tmp_path):
    from handler.contract.settings import FusedLora

    lora = make_tiny_lora(tmp_path / "lora")
    settings = tiny_settings.with_changes(loras=(FusedLora(str(lora), scale=0.8),))
    fused = Core(load_pipeline(str(tiny_model_dir), settings), settings)
    assert not fused.loaded.pipeline.get_list_adapters()  # baked in: no adapter left to run per step
    body = {"prompt": "a fox", "seed": 3}
    ours = fused.handle(rows(body))[0]

    reference = load_pipeline(str(tiny_model_dir), tiny_settings).pipeline
    reference.load_lora_weights(str(lora), adapter_name="style")
    reference.set_adapters(["style"], adapter_weights=[0.8])
    expected = reference(prompt="a fox", num_inference_steps=4, guidance_scale=5.0, width=64, height=64,
                         generator=[torch.Generator("cpu").manual_seed(3)]).images[0]  # fmt: skip
    from tests.helpers import decode_images, max_diff

    assert max_diff(decode_images(ours)[0], expected) <= 1
    base = Core(load_pipeline(str(tiny_model_dir), tiny_settings), tiny_settings).handle(rows(body))[0]
    assert max_diff(decode_images(ours)[0], decode_images(base)[0]) > 1  # the LoRA changes the image


def test_the_lcm_lora_preset_reads_its_lora_and_4_step_lcm_defaults():
    settings = preset("sdxl-lcm-lora.yaml")
    assert settings.loras[0].path.endswith("lcm-lora-sdxl") and settings.loras[0].scale == 1.0
    assert (settings.defaults.sampler, settings.defaults.num_inference_steps) == ("lcm", 4)
    with pytest.raises(Exception, match=r"handler\.loras"):
        HandlerSettings.from_yaml({"handler": {"loras": [{"path": "x", "strength": 1}]}})
