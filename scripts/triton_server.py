"""Serve the tiny model (or a diffusers folder) on a real Triton on 127.0.0.1 and send the design document's request.

    .venv/bin/python scripts/triton_server.py                  # tiny model, CPU; request, print, keep serving
    .venv/bin/python scripts/triton_server.py --once -o out.png
    .venv/bin/python scripts/triton_server.py --model /models/sdxl-base-1.0 --config config/sdxl-base.yaml --gpu

Needs the ``triton`` extra (scripts/install.sh installs it): nvidia-pytriton (tritonserver + Python backend)
and tritonclient.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from handler.adapters.triton_io import OUTPUTS
from scripts.triton_control import TritonServer
from scripts.triton_repository import MODEL_NAME, REPO_ROOT, write_repository


def infer(url: str, prompt: str, steps: int | None = None, **parameters: Any) -> dict[str, Any]:
    """The design document's request with tritonclient: ``prompt`` and ``steps``, the rest as ``parameters``.
    Returns the outputs by name; raises ``InferenceServerException`` with the JSON error document as message."""
    import tritonclient.http as httpclient

    # One client per call (per thread: it is not thread-safe); a generous timeout: a CPU step may be slow.
    client = httpclient.InferenceServerClient(url, connection_timeout=600.0, network_timeout=600.0)
    inputs = [httpclient.InferInput("prompt", [1, 1], "BYTES")]
    inputs[0].set_data_from_numpy(np.array([[prompt.encode()]], dtype=object))
    if steps is not None:
        inputs.append(httpclient.InferInput("steps", [1, 1], "INT32"))
        inputs[-1].set_data_from_numpy(np.array([[steps]], dtype=np.int32))
    if parameters:
        inputs.append(httpclient.InferInput("parameters", [1, 1], "BYTES"))
        inputs[-1].set_data_from_numpy(np.array([[json.dumps(parameters).encode()]], dtype=object))
    result = client.infer(MODEL_NAME, inputs)
    client.close()
    outputs = {name: result.as_numpy(name) for name in OUTPUTS}
    return {
        "image": outputs["image"][0],
        "image_bytes": outputs["image_bytes"][0][0],
        "seed": int(outputs["seed"][0][0]),
        "parameters": json.loads(outputs["effective_parameters"][0][0]),
        "batch": json.loads(outputs["batch"][0][0]),
    }


def start(work: Path, config: Path, model: str | None, gpu: bool = False) -> TritonServer:
    """A Triton serving ``model`` (None: the tiny model, built here) with ``config``'s settings, ready."""
    if model is None:
        from handler.model.tiny_model import save_tiny_pipeline

        model = str(save_tiny_pipeline(work / "tiny-sdxl"))
    write_repository(config, work / "repository", model_path=model)
    server = TritonServer(work / "repository", work / "server", config_name="" if gpu else "cpu")
    server.start()
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="diffusers folder or hub id (default: the tiny model, built offline)")
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "config" / "tiny-sdxl.yaml")
    parser.add_argument("--gpu", action="store_true", help="config.pbtxt (KIND_GPU) instead of configs/cpu.pbtxt")
    parser.add_argument("--prompt", default="A beautiful sunset over mountains")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("-o", "--output", type=Path, default=Path("triton-out.png"))
    parser.add_argument("--once", action="store_true", help="stop after the request")
    args = parser.parse_args(argv)
    server = start(Path(tempfile.mkdtemp(prefix="sdxl-triton-")), args.config, args.model, args.gpu)
    try:
        result = infer(server.url, args.prompt, args.steps)
        args.output.write_bytes(result["image_bytes"])
        print(f"image {result['image'].shape} {result['image'].dtype}, seed {result['seed']} -> {args.output}")
        if not args.once:
            print(f"Triton serving on http://{server.url} (model {MODEL_NAME}); Ctrl-C stops it")
            server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
