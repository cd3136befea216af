"""Shared fixtures: the tiny SDXL pipeline is built ONCE per session (seeded, offline) and loaded on the CPU."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from handler.contract.settings import HandlerSettings
from handler.model.loading import load_pipeline
from handler.model.tiny_model import save_tiny_pipeline
from handler.runtime.core import Core

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_YAML_PATH = REPO_ROOT / "config" / "tiny-sdxl.yaml"


def tiny_yaml() -> dict:
    return yaml.safe_load(TINY_YAML_PATH.read_text())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_settings() -> HandlerSettings:
    return HandlerSettings.from_yaml(tiny_yaml())


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir, tiny_settings):
    return load_pipeline(str(tiny_model_dir), tiny_settings)


@pytest.fixture
def core(tiny_loaded, tiny_settings) -> Core:
    """The serving core on the tiny pipeline; seeds the requests leave out are drawn as 1000, 1001, ..."""
    counter = itertools.count(1000)
    return Core(tiny_loaded, tiny_settings, seed_source=lambda: next(counter))
