"""What every benchmark suite shares (bench/run.py's serving suite, bench/openloop.py's open-loop one): the
machine's record, a variant's model yaml, and a no-archive model built for it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import psutil
import yaml

from scripts.build_archive import build_archive


def machine_info() -> dict:
    import diffusers
    import torch
    import transformers

    info = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }
    try:
        from importlib.metadata import version

        info["versions"]["torchserve"] = version("torchserve")
    except Exception:
        pass
    return info


def model_yaml(base: Path, batch_size: int, max_batch_delay: int, width: int, height: int, steps: int) -> dict:
    config = yaml.safe_load(base.read_text())
    config.update({"batchSize": batch_size, "maxBatchDelay": max_batch_delay})
    section = config.setdefault("handler", {})
    section["defaults"] = {
        **section.get("defaults", {}),
        "width": width,
        "height": height,
        "num_inference_steps": steps,
    }
    return config


def build_variant(model_dir: Path, config: dict, name: str, work: Path, handler_file: Path | None = None) -> None:
    """A no-archive model ``name`` in ``work/model_store`` serving ``model_dir`` with the model yaml ``config``."""
    yaml_path = work / f"{name}.yaml"
    yaml_path.write_text(yaml.safe_dump(config))
    build_archive(
        str(model_dir),
        config=yaml_path,
        export_path=work / "model_store",
        archive_format="no-archive",
        model_name=name,
        build_dir=work / "build",
        handler_file=handler_file,
    )
