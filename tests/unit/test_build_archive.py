"""scripts/build_archive.py: the scheduling mode is one flag, written into the archive's yaml (TorchServe reads
``continuousBatching`` from the archive, so a mode switch is a rebuild)."""

import json
import zipfile

import pytest
import yaml

from scripts.build_archive import build_archive


@pytest.mark.parametrize("continuous", [True, False])
def test_the_continuous_flag_sets_the_archives_scheduling_mode(tmp_path, continuous):
    archive = build_archive("tiny", export_path=tmp_path / "store", build_dir=tmp_path / "build", continuous=continuous)
    with zipfile.ZipFile(archive) as packed:
        manifest = json.loads(packed.read("MAR-INF/MANIFEST.json"))
        model_yaml = yaml.safe_load(packed.read(manifest["model"]["configFile"]))
    assert model_yaml["continuousBatching"] is continuous
    assert model_yaml["handler"]["defaults"]["width"] == 64  # the rest of config/tiny-sdxl.yaml, as it was
