"""``sdxl-client generate "a prompt" --seed 7 --steps 20 -o out.png``: generate with a live progress bar.

``--image in.png --strength 0.6`` makes it img2img, ``--mask mask.png`` inpainting (white repaints).

Through the async job API: ``sdxl-client submit "a prompt"`` prints a job id; ``status ID``, ``wait ID -o
out.png`` (progress bar from the event stream), ``cancel ID`` and ``fetch ID -o out.png``.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

import requests

from handler.wire.events import PARKED, PREVIEW, PROGRESS, RESULT, STATUS

from .client import APIError, SDXLClient
from .jobs import JobsClient


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdxl-client", description="Client of the sdxl-torchserve endpoint.")
    sub = parser.add_subparsers(dest="command", required=True)
    generate = sub.add_parser("generate", help="make an image and save it")
    add_output(generate)
    add_request_args(generate)
    generate.add_argument("--no-progress", action="store_true", help="no progress bar (one plain request)")
    generate.add_argument("--url", default="http://127.0.0.1:8080", help="inference address")
    generate.add_argument("--model", default="stable-diffusion-xl")
    generate.add_argument("--token", help="inference key (default: $SDXL_TOKEN or key_file.json)")
    generate.add_argument("--key-file", help="TorchServe's key_file.json (default ./key_file.json)")
    generate.add_argument(
        "--management-url", default="http://127.0.0.1:8081", help="where an expired key is renewed (loopback)"
    )

    submit = sub.add_parser("submit", help="submit a job to the job API; prints its id")
    add_request_args(submit)
    submit.add_argument("--format", choices=("png", "jpeg", "webp"), default="png", help="output_format")
    submit.add_argument("--webhook", help="URL called when the job ends (must be on the gateway's allow-list)")
    submit.add_argument("--metadata", type=json.loads, help="JSON object kept with the job")
    submit.add_argument("--idempotency-key", help="the same key and body return the same job")
    add_gateway(submit)
    for name, text in (("status", "print a job"), ("cancel", "cancel a job")):
        add_gateway(sub.add_parser(name, help=text)).add_argument("job_id")
    for name, text in (
        ("wait", "follow a job with a progress bar, then save its image"),
        ("fetch", "save a finished job's image"),
    ):
        command = add_gateway(sub.add_parser(name, help=text))
        command.add_argument("job_id")
        add_output(command)
        command.add_argument("--index", type=int, default=0, help="which image (num_images_per_prompt > 1)")
    return parser


def add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("out.png"),
        help="image file (default out.png); its suffix picks png, jpg/jpeg or webp",
    )


def add_gateway(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--jobs-url", default="http://127.0.0.1:8090", help="the job API gateway")
    parser.add_argument("--api-key", help="job API key (default: $SDXL_JOBS_KEY or jobs_keys.json)")
    parser.add_argument("--keys-file", help="the gateway's jobs_keys.json (default ./jobs_keys.json)")
    return parser


# The request options: CLI flag -> request field and type. Each flag's help is its field's own entry in the
# contract's field table (handler.contract.fields), so the CLI and the docs cannot say different things.
REQUEST_OPTIONS = (
    ("--seed", "seed", int),
    ("--steps", "num_inference_steps", int),
    ("--guidance", "guidance_scale", float),
    ("--negative", "negative_prompt", str),
    ("--syntax", "prompt_syntax", str),
    ("--width", "width", int),
    ("--height", "height", int),
    ("--sampler", "sampler", str),
    ("--schedule", "schedule", str),
    ("--timeout-s", "timeout_s", float),
    ("--image", "image", Path),  # a file here, sent as base64
    ("--strength", "strength", float),
    ("--mask", "mask_image", Path),
    ("--resize-mode", "resize_mode", str),
    ("--denoising-end", "denoising_end", float),
)


def field_help(name: str, kind: type = str) -> str:
    from handler.contract.fields import describe_fields

    field = next(f for f in describe_fields() if f.name == name)
    given = " A file (PNG, JPEG or WebP), sent base64." if kind is Path else ""
    bounds = f" Bounds: {field.bounds}." if field.bounds else ""
    default = f" Built-in default: {field.default} (the server's yaml may set another)."
    text = f"`{name}`: {field.description}{given}{bounds}{default}"
    return text.replace("%", "%%")  # argparse formats help with %


def add_request_args(generate: argparse.ArgumentParser) -> None:
    generate.add_argument("prompt", help=field_help("prompt"))
    for flag, name, kind in REQUEST_OPTIONS:
        generate.add_argument(flag, dest=name, type=kind, help=field_help(name, kind))
    generate.add_argument("--previews", type=Path, help="folder for low-resolution previews")
    generate.add_argument("--preview-every", type=int, default=5, help="steps between previews (default 5)")


def request_body(args: argparse.Namespace) -> dict:
    if getattr(args, "output", None) is not None:
        suffix = args.output.suffix.lower().lstrip(".")
        output_format = {"jpg": "jpeg"}.get(suffix, suffix or "png")
    else:
        output_format = args.format
    body = {"prompt": args.prompt, "output_format": output_format}
    for _flag, name, kind in REQUEST_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            body[name] = base64_file(value) if kind is Path else value
    return body


def base64_file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def generate(args: argparse.Namespace) -> dict:
    client = SDXLClient(
        args.url, args.model, token=args.token, key_file=args.key_file, management_url=args.management_url
    )
    body = request_body(args)
    if args.no_progress:
        return client.generate(body)
    from tqdm import tqdm

    if args.previews:
        body["preview_every"] = args.preview_every
        args.previews.mkdir(parents=True, exist_ok=True)
    with tqdm(total=None, unit="step", desc="denoising", file=sys.stderr) as bar:
        for event in client.stream(body):
            if event["event"] == PROGRESS:
                bar.total = event["total_steps"]
                bar.update(event["step"] - bar.n)
                bar.set_postfix(eta=f"{event['eta_s']:.1f}s")
            elif event["event"] == PARKED:  # the server's step policy let more urgent requests step first
                bar.set_postfix_str(f"parked at step {event['step']}")
            elif event["event"] == PREVIEW:
                path = args.previews / f"step-{event['step']:03d}.jpg"
                path.write_bytes(base64.b64decode(event["images"][0]))
            elif event["event"] == RESULT:
                return event
    raise APIError(200, "the stream ended without a result")


def run_job_command(args: argparse.Namespace) -> int:
    """submit / status / wait / cancel / fetch against the job API."""
    client = JobsClient(args.jobs_url, key=args.api_key, keys_file=args.keys_file)
    if args.command == "submit":
        body = request_body(args)
        if args.previews:
            body["preview_every"] = args.preview_every
        job = client.submit(body, webhook=args.webhook, metadata=args.metadata, idempotency_key=args.idempotency_key)
        print(job["job_id"])
        print(json.dumps({k: job[k] for k in ("status", "queue_position", "estimated_time")}), file=sys.stderr)
        return 0
    if args.command in ("status", "cancel"):
        job = client.status(args.job_id) if args.command == "status" else client.cancel(args.job_id)
        print(json.dumps(job, indent=2))
        return 0
    if args.command == "wait":
        job = follow_job(client, args.job_id)
        if job["status"] != "completed":
            error = job.get("error") or {}
            print(f"job {args.job_id} {job['status']}: {error.get('message', '')}".rstrip(": "), file=sys.stderr)
            return 1
    data = client.fetch(args.job_id, args.index)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    print(f"saved {args.output} ({len(data)} bytes)")
    return 0


def follow_job(client: JobsClient, job_id: str) -> dict:
    from tqdm import tqdm

    with tqdm(total=None, unit="step", desc="waiting", file=sys.stderr) as bar:

        def show(event: dict) -> None:
            data = event["data"]
            if event["event"] == PROGRESS:
                bar.set_description("denoising")
                bar.total = data["total_steps"]
                bar.update(data["step"] - bar.n)
            elif event["event"] == STATUS:
                bar.set_postfix(status=data["status"])

        return client.wait(job_id, show)


def calling(url: str, command) -> int:
    """Run ``command``; an API error or an unreachable server becomes one line on stderr and an exit code
    (2 for a 4xx: the request must change; 1 otherwise)."""
    try:
        return command()
    except APIError as exc:
        where = f" (field `{exc.field}`)" if exc.field else ""
        print(f"error: {exc.message}{where} [HTTP {exc.status} {exc.error_type}]".rstrip(), file=sys.stderr)
        return 2 if 400 <= exc.status < 500 else 1
    except requests.RequestException as exc:
        print(f"error: cannot reach {url}: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "generate":
        return calling(args.jobs_url, lambda: run_job_command(args))
    return calling(args.url, lambda: save_generated(args))


def save_generated(args: argparse.Namespace) -> int:
    result = generate(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(base64.b64decode(result["images"][0]))
    parameters = result["parameters"]
    print(
        f"saved {args.output} ({parameters['width']}x{parameters['height']}, seed {result['seeds'][0]}, "
        f"{parameters['num_inference_steps']} steps)"
    )
    print(json.dumps({"seed": result["seeds"][0], "parameters": parameters}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
