import base64

import numpy as np
import pytest
import yaml
from PIL import Image

from handler.contract.errors import ConfigError
from handler.contract.settings import HandlerSettings, WarmupShape
from handler.wire.encode import encode_image
from scripts.torchserve_control import SHIPPED_CONFIG, read_properties
from tests.conftest import REPO_ROOT

SHIPPED_YAMLS = sorted((REPO_ROOT / "config").glob("*sdxl*.yaml"))


def test_empty_section_gives_built_in_settings():
    settings = HandlerSettings.from_yaml({})
    assert settings == HandlerSettings()
    assert settings.warmup_shapes() == (WarmupShape(1024, 1024),)


@pytest.mark.parametrize("path", SHIPPED_YAMLS, ids=lambda p: p.name)
def test_shipped_yamls_load(path):
    model_yaml = yaml.safe_load(path.read_text())
    settings = HandlerSettings.from_yaml(model_yaml)
    assert model_yaml["batchSize"] >= 1 and model_yaml["maxBatchDelay"] >= 0
    assert settings.warmup_shapes()


def test_tiny_yaml_values_reach_settings(tiny_settings):
    assert tiny_settings.defaults.width == 64
    assert tiny_settings.limits.max_size == 512
    assert tiny_settings.warmup_shapes() == (WarmupShape(64, 64, 2, 1),)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"dtpye": "float16"}, "handler: unknown key(s) dtpye"),
        ({"limits": {"max_width": 4}}, "handler.limits: unknown key(s) max_width"),
        ({"defaults": {"width": "64"}}, "handler.defaults.width must be int but is '64'"),
        ({"device": "tpu"}, "handler.device must be one of auto, cpu, cuda but is 'tpu'"),
        ({"dtype": "fp8"}, "handler.dtype must be one of"),
        ({"attention": "flash"}, "handler.attention must be one of"),
        ({"defaults": {"width": 2048}}, "handler.defaults break handler.limits: `width` must be between"),
        ({"png_compress_level": 12}, "handler.png_compress_level must be 0..9"),
        ({"warmup": {"width": 64}}, "handler.warmup must be a list"),
        ({"warmup": [{"width": 64, "hieght": 64}]}, "handler.warmup[]: unknown key(s) hieght"),
        ({"max_images_per_call": 2}, "max_images_per_call must be >= handler.limits.max_images_per_prompt"),
        ({"steps_per_call": 0}, "handler.steps_per_call must be >= 1 but is 0"),
        ({"overlap_side_work": 1}, "handler.overlap_side_work must be auto, true or false but is 1"),
        ({"overlap_side_work": "yes"}, "handler.overlap_side_work must be auto, true or false but is 'yes'"),
    ],
)
def test_config_mistakes_fail_at_startup_with_the_key_named(section, message):
    with pytest.raises(ConfigError) as caught:
        HandlerSettings.from_yaml({"handler": section})
    assert message in str(caught.value)


def test_continuous_mode_is_torchserves_own_key_and_overlap_resolves_per_device():
    settings = HandlerSettings.from_yaml({"continuousBatching": True, "handler": {"steps_per_call": 2}})
    assert settings.continuous and settings.steps_per_call == 2
    assert not HandlerSettings.from_yaml({"handler": {}}).continuous
    assert (settings.overlaps_side_work("cuda"), settings.overlaps_side_work("cpu")) == (True, False)
    forced = HandlerSettings.from_yaml({"handler": {"overlap_side_work": True}})
    assert forced.overlaps_side_work("cpu")
    with pytest.raises(ConfigError, match="continuousBatching must be true or false but is 'yes'"):
        HandlerSettings.from_yaml({"continuousBatching": "yes"})


def _worst_case_png_base64_bytes(size: int) -> int:
    """Base64 length of a PNG of pure noise (incompressible): an upper bound for a real image of that size."""
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    png = encode_image(Image.fromarray(noise), "png", HandlerSettings())
    return len(base64.b64encode(png))


def test_a_1024_png_and_the_largest_allowed_response_fit_the_configured_limits():
    max_response_size = int(read_properties(SHIPPED_CONFIG)["max_response_size"])
    one_1024 = _worst_case_png_base64_bytes(1024)
    for path in SHIPPED_YAMLS:
        settings = HandlerSettings.from_yaml(yaml.safe_load(path.read_text()))
        # The handler refuses what TorchServe would choke on, so its own cap must be the lower one.
        assert settings.max_response_bytes <= max_response_size, path.name
        largest = settings.limits.max_images_per_prompt * _worst_case_png_base64_bytes(settings.limits.max_size)
        assert largest + 4096 <= settings.max_response_bytes, (path.name, largest)
        assert one_1024 < settings.max_response_bytes
    assert one_1024 < max_response_size


def test_noise_png_really_is_incompressible():
    # Guards the bound above: a PNG of noise must not come out smaller than the raw pixels.
    assert _worst_case_png_base64_bytes(256) > 256 * 256 * 3
