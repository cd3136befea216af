"""Triton Python-backend model: wires initialize / execute / finalize to the same core TorchServe serves.

The model yaml next to this folder (``../model.yaml``, written by scripts/triton_repository.py) gives the
defaults, bounds and the weights (``handler.model_path``). Tensors move through :mod:`handler.adapters.triton_io`;
everything else is :mod:`handler.runtime.core`. Imports ``triton_python_backend_utils``, so it runs only inside Triton.
"""

from pathlib import Path

import triton_python_backend_utils as pb_utils
import yaml

from handler.adapters import triton_io
from handler.runtime.startup import build_core

INPUTS = ("prompt", "steps", "parameters")


class TritonPythonModel:
    def initialize(self, args):
        model_yaml = yaml.safe_load((Path(args["model_repository"]) / "model.yaml").read_text())
        model_yaml["continuousBatching"] = False  # Triton's dynamic batcher hands over whole batches
        gpu = int(args["model_instance_device_id"]) if args["model_instance_kind"] == "GPU" else None
        # loads and warms up; replies keep the decoded images, so `image` is pixels, not our PNG decoded back
        self.core = build_core(
            args["model_repository"], model_yaml, gpu, keep_images=True, serving_name=args.get("model_name")
        )

    def execute(self, requests):
        inputs = []
        for request in requests:
            tensors = {name: pb_utils.get_input_tensor_by_name(request, name) for name in INPUTS}
            inputs.append({name: t.as_numpy() for name, t in tensors.items() if t is not None})
        responses = []
        for result in triton_io.serve(self.core, inputs):
            if isinstance(result, triton_io.TritonFailure):
                error = pb_utils.TritonError(result.message, getattr(pb_utils.TritonError, result.code))
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                outputs = [pb_utils.Tensor(name, result[name]) for name in triton_io.OUTPUTS]
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

    def finalize(self):
        self.core.close()
