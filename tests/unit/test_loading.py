import pytest
import torch

from handler.contract.errors import ConfigError
from handler.contract.settings import HandlerSettings
from handler.model.loading import choose_attention, load_pipeline, resolve_device, resolve_dtype

CPU = torch.device("cpu")


def test_auto_dtype_is_float32_on_cpu_and_float16_on_cuda():
    assert resolve_dtype("auto", CPU) is torch.float32
    assert resolve_dtype("auto", torch.device("cuda", 0)) is torch.float16
    assert resolve_dtype("bfloat16", torch.device("cuda", 0)) is torch.bfloat16


def test_float16_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="float16 needs a GPU"):
        resolve_dtype("float16", CPU)


def test_attention_is_sdpa_without_cuda():
    assert choose_attention("auto", CPU) == "sdpa"
    assert choose_attention("sdpa", torch.device("cuda", 0)) == "sdpa"
    with pytest.raises(ConfigError, match="xformers is not installed or the device is not CUDA"):
        choose_attention("xformers", CPU)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_device_auto_falls_back_to_cpu():
    assert resolve_device("auto", gpu_id=0) == CPU
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_tiny_pipeline_loads_in_float32_on_cpu_with_sdpa(tiny_loaded):
    pipeline = tiny_loaded.pipeline
    assert (tiny_loaded.device, tiny_loaded.dtype, tiny_loaded.attention) == (CPU, torch.float32, "sdpa")
    for component in (pipeline.unet, pipeline.vae, pipeline.text_encoder, pipeline.text_encoder_2):
        assert next(component.parameters()).dtype is torch.float32
    processors = {type(p).__name__ for p in pipeline.unet.attn_processors.values()}
    assert processors == {"AttnProcessor2_0"}


def test_bfloat16_and_replacement_vae_load_through_the_same_path(tiny_model_dir):
    settings = HandlerSettings(dtype="bfloat16", vae_path=str(tiny_model_dir / "vae"))
    loaded = load_pipeline(str(tiny_model_dir), settings)
    assert next(loaded.pipeline.unet.parameters()).dtype is torch.bfloat16
    assert next(loaded.pipeline.vae.parameters()).dtype is torch.bfloat16


def test_a_folder_without_weights_fails_loudly(tmp_path):
    with pytest.raises(Exception, match=r"model_index\.json|no file named|not found|does not appear"):
        load_pipeline(str(tmp_path), HandlerSettings())
