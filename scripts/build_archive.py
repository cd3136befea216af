"""Build the TorchServe model archive for SDXL with torch-model-archiver.

    python scripts/build_archive.py --model tiny                        # tiny model -> build/model_store/*.mar
    python scripts/build_archive.py --model /models/sdxl-base-1.0       # a local diffusers folder
    python scripts/build_archive.py --model stabilityai/stable-diffusion-xl-base-1.0   # hub id (online)

The archive holds the diffusers folder at its root, the ``handler`` package, and the model yaml. A zip
.mar is unpacked to $TEMP on every start: fine for the 7 MB tiny model; real weights default to
``--archive-format no-archive`` (a plain folder in the model store).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from scripts.torchserve_control import MODEL_NAME, tool  # noqa: E402

HANDLER_DIR = REPO_ROOT / "handler"
BUILD_DIR = REPO_ROOT / "build"
# Weight formats worth downloading; .bin/.ckpt/.onnx duplicates of the safetensors are skipped.
HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors"]


def resolve_weights(model: str, build_dir: Path) -> Path:
    """``tiny`` -> build it; an existing folder -> itself; anything else -> a hub id to download."""
    if model == "tiny":
        from handler.model.tiny_model import save_tiny_pipeline

        folder = build_dir / "tiny-sdxl"
        if not (folder / "model_index.json").exists():
            save_tiny_pipeline(folder)
        return folder
    path = Path(model)
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise SystemExit(f"{path} is not a diffusers folder: model_index.json is missing")
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=HUB_PATTERNS, local_dir=build_dir / "hub" / model))


def stage_handler(build_dir: Path) -> Path:
    """A folder holding a clean copy of the ``handler`` package (extra-files copies a folder's contents)."""
    stage = build_dir / "stage"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(HANDLER_DIR, stage / "handler", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return stage


def build_archive(
    model: str,
    config: Path | None = None,
    export_path: Path = REPO_ROOT / "build" / "model_store",
    archive_format: str | None = None,
    model_name: str = MODEL_NAME,
    version: str = "1.0",
    build_dir: Path = BUILD_DIR,
    handler_file: Path | None = None,
    weights_by_path: bool = False,
    continuous: bool | None = None,
) -> Path:
    """Build the archive; returns its path (a .mar file, a .tar.gz, or a folder for no-archive).

    Args:
        model (`str`): "tiny", a local diffusers folder, or a hub id.
        config (`Path`, defaults to config/tiny-sdxl.yaml for tiny, else config/sdxl-base.yaml): the model yaml.
        export_path (`Path`, defaults to build/model_store/): where the archive goes (replaced if present). The
            repository's model_store/ is left to the README's by-hand commands.
        archive_format (`str`, defaults to "default" for tiny, else "no-archive"): torch-model-archiver's format.
        model_name (`str`, defaults to "stable-diffusion-xl"): the name in /predictions/<name>.
        version (`str`, defaults to "1.0"): the model version.
        build_dir (`Path`, defaults to build/): scratch space for the tiny model and staging.
        handler_file (`Path`, defaults to handler/adapters/torchserve_handler.py): the TorchServe entry module (the
            benchmark swaps in its baseline here).
        weights_by_path (`bool`, defaults to False): leave the weights out of the archive and point the yaml's
            ``handler.model_path`` at them (for weights on a mounted volume; nothing is copied).
        continuous (`bool`, defaults to None): set the yaml's ``continuousBatching`` (the scheduling mode) to
            this; None keeps the yaml's.
    """
    # 1. Inputs.
    is_tiny = model == "tiny"
    config = Path(config or REPO_ROOT / "config" / ("tiny-sdxl.yaml" if is_tiny else "sdxl-base.yaml"))
    archive_format = archive_format or ("default" if is_tiny else "no-archive")
    build_dir.mkdir(parents=True, exist_ok=True)
    export_path.mkdir(parents=True, exist_ok=True)

    # 2. Weights and the handler package, both placed at the archive root.
    # A path by reference may not exist yet (a volume mounted at run time); it is not resolved or checked.
    by_reference = weights_by_path and Path(model).is_absolute()
    weights = Path(model) if by_reference else resolve_weights(model, build_dir)
    stage = stage_handler(build_dir)
    extra_files = f"{weights},{stage}"
    if weights_by_path or continuous is not None:  # a build copy of the yaml, changed
        model_yaml = yaml.safe_load(config.read_text())
        if weights_by_path:
            model_yaml.setdefault("handler", {})["model_path"] = str(Path(weights).resolve())
            extra_files = str(stage)
        if continuous is not None:
            model_yaml["continuousBatching"] = continuous
        config = build_dir / f"{model_name}.yaml"
        config.write_text(yaml.safe_dump(model_yaml, sort_keys=False))

    # 3. Archive.
    archiver = tool("torch-model-archiver")
    command = [
        archiver,
        "--model-name", model_name,
        "--version", version,
        "--handler", str(handler_file or stage / "handler" / "adapters" / "torchserve_handler.py"),
        "--extra-files", extra_files,
        "--config-file", str(config),
        "--export-path", str(export_path),
        "--archive-format", archive_format,
        "--force",
    ]  # fmt: skip
    subprocess.run(command, check=True)
    suffix = {"default": ".mar", "tgz": ".tar.gz", "no-archive": ""}[archive_format]
    return export_path / f"{model_name}{suffix}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the SDXL TorchServe model archive.")
    parser.add_argument("--model", default="tiny", help="tiny (default), a diffusers folder, or a hub id")
    parser.add_argument("--config", type=Path, help="model yaml (default: config/tiny-sdxl.yaml or sdxl-base.yaml)")
    parser.add_argument("--export-path", type=Path, default=REPO_ROOT / "build" / "model_store")
    parser.add_argument("--archive-format", choices=["default", "no-archive", "tgz"])
    parser.add_argument("--model-name", default=MODEL_NAME)
    parser.add_argument("--version", default="1.0")
    parser.add_argument(
        "--weights-by-path",
        action="store_true",
        help="leave the weights out; the yaml's handler.model_path points at them (a mounted volume)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--continuous", action="store_const", const=True, help="continuousBatching: true")
    mode.add_argument("--static", dest="continuous", action="store_const", const=False, help="... false")
    args = parser.parse_args(argv)
    path = build_archive(
        args.model,
        args.config,
        args.export_path,
        args.archive_format,
        args.model_name,
        args.version,
        weights_by_path=args.weights_by_path,
        continuous=args.continuous,
    )
    print(f"archive written: {path}")


if __name__ == "__main__":
    main()
