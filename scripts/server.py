"""Run the SDXL TorchServe server locally: start, stop, send a request, or do all of it (demo).

    python scripts/server.py start            # start TorchServe with ./config.properties, wait for READY
    python scripts/server.py predict "a red fox in snow" --seed 7 -o outputs/fox.png
    python scripts/server.py stop
    python scripts/server.py demo             # build the tiny archive if missing, start, predict, keep running
    python scripts/server.py demo --continuous   # the same, rebuilt in step-level continuous batching

The server runs from the repository root, so TorchServe's token keys land in ./key_file.json and logs in
./logs/. `predict` reads the inference key from key_file.json.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from scripts.torchserve_control import MODEL_NAME, SHIPPED_CONFIG, TorchServe  # noqa: E402

MODEL_STORE = REPO_ROOT / "build" / "model_store"  # build_archive.py's; model_store/ is the by-hand one


def local_server(config: Path = SHIPPED_CONFIG) -> TorchServe:
    return TorchServe(workdir=REPO_ROOT, config=config, model_store=MODEL_STORE)


def start(server: TorchServe, timeout: float) -> None:
    archives = [p for p in MODEL_STORE.iterdir() if p.name.startswith(MODEL_NAME)] if MODEL_STORE.exists() else []
    if not archives:
        raise SystemExit(f"no archive in {MODEL_STORE}: run `python scripts/build_archive.py` first")
    server.start()
    print(f"TorchServe starting (logs: {server.log_file.parent}); waiting for {MODEL_NAME} to be READY ...")
    try:
        server.wait_ready(timeout=timeout)
    except TimeoutError as exc:
        server.stop()
        raise SystemExit(str(exc)) from None
    print(f"READY: {server.inference_url}/predictions/{MODEL_NAME}")


def predict(server: TorchServe, prompt: str, seed: int | None, steps: int | None, output: Path) -> Path:
    body: dict = {"prompt": prompt}
    if seed is not None:
        body["seed"] = seed
    if steps is not None:
        body["num_inference_steps"] = steps
    response = server.predict(body)
    if response.status_code != 200:
        raise SystemExit(f"HTTP {response.status_code}: {response.text}")
    document = response.json()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(base64.b64decode(document["images"][0]))
    parameters = document["parameters"]
    print(
        f"image saved to {output} ({parameters['width']}x{parameters['height']}, seed {document['seeds'][0]}, "
        f"{parameters['num_inference_steps']} steps, {document['timings_ms']['total']:.0f} ms in the handler)"
    )
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("start", "demo"):
        command = sub.add_parser(name)
        command.add_argument("--timeout", type=float, default=600, help="seconds to wait for READY (default 600)")
    sub.add_parser("stop")
    for name in ("predict", "demo"):
        command = sub.choices.get(name) or sub.add_parser(name)
        command.add_argument("prompt", nargs="?", default="A beautiful sunset over mountains")
        command.add_argument("--seed", type=int)
        command.add_argument("--steps", type=int)
        command.add_argument("-o", "--output", type=Path, default=REPO_ROOT / "outputs" / "sample.png")
    mode = sub.choices["demo"].add_mutually_exclusive_group()
    mode.add_argument("--continuous", action="store_const", const=True, help="rebuild: continuousBatching true")
    mode.add_argument("--static", dest="continuous", action="store_const", const=False, help="rebuild: false")
    args = parser.parse_args(argv)
    server = local_server()

    if args.command == "stop":
        server.stop()
        print("TorchServe stopped")
    elif args.command == "start":
        start(server, args.timeout)
    elif args.command == "predict":
        predict(server, args.prompt, args.seed, args.steps, args.output)
    elif args.command == "demo":
        if args.continuous is not None or not (MODEL_STORE / f"{MODEL_NAME}.mar").exists():
            from scripts.build_archive import build_archive

            mode = {None: "", True: " (continuous batching)", False: " (static batching)"}[args.continuous]
            print(f"building the tiny SDXL model and its archive{mode} ...")
            build_archive("tiny", continuous=args.continuous)
        start(server, args.timeout)
        predict(server, args.prompt, args.seed, args.steps, args.output)
        key = server.keys().get("inference", "<key from key_file.json>")
        print(
            "\nTorchServe keeps running. Try it yourself:\n"
            f"  curl -X POST {server.inference_url}/predictions/{MODEL_NAME} \\\n"
            f'    -H "Authorization: Bearer {key}" \\\n'
            '    -H "Content-Type: application/json" -d \'{"prompt": "A beautiful sunset over mountains"}\'\n'
            "Stop it with: .venv/bin/python scripts/server.py stop"
        )


if __name__ == "__main__":
    main()
