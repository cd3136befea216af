"""How long a joining img2img request stalls the requests already in flight (continuous batching, in-process).

    python -m bench.join_stall                     # tiny model, 64 and 256 px, overlap off and on
    python -m bench.join_stall --sizes 64 --trials 40

Each trial is one handler call with ``in_flight`` long text-to-image requests in the loop and one request
joining: none, a text-to-image one, or an img2img one. The call's wall time is what every request in flight
waits for its next step; the stall a joiner causes is its call time minus the no-join call's. img2img adds the
image's base64 + PNG decode (parse) and its VAE encode (inline without overlap; on the side thread with it).
Prints one JSON document (medians in ms).
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from handler.contract.settings import HandlerSettings
from handler.model.loading import load_pipeline
from handler.model.tiny_model import save_tiny_pipeline
from handler.runtime.core import Core

REPO_ROOT = Path(__file__).resolve().parent.parent


def png_base64(size: int) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (size, size, 3)).astype(np.uint8)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def measure(core: Core, size: int, trials: int, in_flight: int) -> dict:
    ids = (f"r{n}" for n in itertools.count())
    image = png_base64(size)
    long = {"prompt": "long", "width": size, "height": size, "num_inference_steps": 50}
    joiners = {
        "none": None,
        "txt2img": {"prompt": "joiner", "width": size, "height": size, "num_inference_steps": 4},
        "img2img": {"prompt": "joiner", "width": size, "height": size, "num_inference_steps": 4, "image": image,
                    "strength": 1.0},
    }  # fmt: skip
    flying = [next(ids) for _ in range(in_flight)]
    rows = {request_id: {"body": json.dumps({**long, "seed": n}).encode()} for n, request_id in enumerate(flying)}
    core.render(core.run(core.parse(list(rows.values()), None, flying)))
    times: dict[str, list[float]] = {name: [] for name in joiners}
    encode_ms: list[float] = []
    for trial in range(trials):
        for name, body in joiners.items():
            call_ids, call_rows = list(flying), [{} for _ in flying]
            joiner = None
            if body is not None:
                joiner = next(ids)
                call_ids.append(joiner)
                call_rows.append({"body": json.dumps({**body, "seed": trial}).encode()})
            started = time.perf_counter()
            call = core.run(core.parse(call_rows, None, call_ids))
            core.render(call)
            times[name].append((time.perf_counter() - started) * 1000)
            if joiner is not None:
                flight = core.flights.pop(joiner)  # leave at once: the next call has the same rows in flight
                encode_ms += [flight.timings_ms["vae_encode"]] if "vae_encode" in flight.timings_ms else []
                core.render(core.run(core.parse([{} for _ in flying], None, flying)))  # let a side job settle
        if len(core.flights) < in_flight:  # the long requests finished: start them again
            flying = [next(ids) for _ in range(in_flight)]
            rows = {rid: {"body": json.dumps({**long, "seed": n}).encode()} for n, rid in enumerate(flying)}
            core.render(core.run(core.parse(list(rows.values()), None, flying)))
    medians = {name: round(statistics.median(values), 2) for name, values in times.items()}
    return {
        "call_ms": medians,
        "stall_ms": {name: round(medians[name] - medians["none"], 2) for name in ("txt2img", "img2img")},
        "img2img_over_txt2img_join_ms": round(medians["img2img"] - medians["txt2img"], 2),
        "vae_encode_ms": round(statistics.median(encode_ms), 2) if encode_ms else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[64, 256])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--in-flight", type=int, default=3)
    args = parser.parse_args(argv)
    import yaml

    model_yaml = yaml.safe_load((REPO_ROOT / "config" / "tiny-sdxl.yaml").read_text())
    settings = HandlerSettings.from_yaml({**model_yaml, "continuousBatching": True})
    folder = save_tiny_pipeline(Path(tempfile.mkdtemp(prefix="sdxl-stall-")) / "tiny-sdxl")
    loaded = load_pipeline(str(folder), settings)
    results = {"in_flight": args.in_flight, "trials": args.trials, "steps_per_call": settings.steps_per_call}
    results["runs"] = []
    for size in args.sizes:
        for overlap in (False, True):
            core = Core(loaded, settings.with_changes(overlap_side_work=overlap))
            run = measure(core, size, args.trials, args.in_flight)
            results["runs"].append({"size": size, "overlap_side_work": overlap, **run})
            print(json.dumps(results["runs"][-1]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
