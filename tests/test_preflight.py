"""Preflight: every data problem a run could hit is caught before any process starts, by name."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from engine.config import RunConfig
from engine.errors import DataError
from engine.preflight import preflight
from engine.shards import encode_jpeg
from engine.synth import make_image, write_synthetic


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("synth") / "data", num_classes=4, image_size=16,
                           train_samples=80, val_samples=40, train_shards=4, val_shards=2, progress=False)


@pytest.fixture
def data(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of the good data set for each test to break."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def config(data: Path, **overrides: object) -> RunConfig:
    values = {"data": str(data), "workers": 2, "loader_workers": 1, **overrides}
    return RunConfig.from_dict(values).validate()


def edit_manifest(split_dir: Path, change) -> None:
    path = split_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def rewrite_shard(split_dir: Path, name: str, samples: list[tuple[str, bytes, int]]) -> Path:
    """Replace one shard and fix up its manifest entry, so only the sample contents are wrong."""
    path = split_dir / name
    with wds.TarWriter(str(path)) as writer:
        for key, jpeg, label in samples:
            writer.write({"__key__": key, "jpg": jpeg, "cls": str(label).encode()})

    def fix(manifest: dict) -> None:
        entry = next(s for s in manifest["shards"] if s["name"] == name)
        entry.update(count=len(samples), bytes=path.stat().st_size,
                     sha256=hashlib.sha256(path.read_bytes()).hexdigest())

    edit_manifest(split_dir, fix)
    return path


def jpeg(label: int, size: int = 16) -> bytes:
    return encode_jpeg(make_image(label, 4, size, np.random.default_rng(label)))


def test_good_data_reports_absolute_locations_counts_and_is_fast(data: Path) -> None:
    report = preflight(config(data))
    summary = report.to_dict()
    assert summary["train"]["dir"] == str((data / "train").resolve())
    assert summary["val"]["manifest"] == str((data / "val" / "manifest.json").resolve())
    assert (summary["train"]["samples"], summary["train"]["shards"]) == (80, 4)
    assert (summary["val"]["samples"], summary["val"]["shards"]) == (40, 2)
    assert summary["num_classes"] == 4 and summary["image_size"] == [16, 16]
    assert report.warnings == [] and report.seconds < 1.0
    assert json.loads(json.dumps(summary)) == summary
    assert any(str(data / "train") in line for line in report.lines())


def test_shard_missing_from_data_dir_is_named(data: Path) -> None:
    (data / "train" / "train-000002.tar").unlink()
    with pytest.raises(DataError, match=r"train shard .*train-000002\.tar is listed in .* but missing"):
        preflight(config(data))


def test_shard_missing_from_url_range_is_named(data: Path) -> None:
    url = f"file:{data}/train/train-{{000000..000004}}.tar"
    with pytest.raises(DataError, match=r"train-000004\.tar does not exist"):
        preflight(config(data, train_url=url, val_url=str(data / "val")))


def test_url_range_reading_part_of_a_split_is_a_warning(data: Path) -> None:
    url = f"file:{data}/train/train-{{000000..000001}}.tar"
    report = preflight(config(data, train_url=url, val_url=str(data / "val"), workers=1))
    assert any("reads 2 of the 4 shards" in w for w in report.warnings)


def test_empty_shard_is_named(data: Path) -> None:
    (data / "val" / "val-000001.tar").write_bytes(b"")
    with pytest.raises(DataError, match=r"val shard .*val-000001\.tar is empty"):
        preflight(config(data))


def test_random_bytes_shard_is_not_a_readable_tar(data: Path) -> None:
    shard = data / "train" / "train-000001.tar"
    shard.write_bytes(os.urandom(shard.stat().st_size))  # same size, so only the tar check can see it
    with pytest.raises(DataError, match=r"train shard .*train-000001\.tar is not a readable tar file"):
        preflight(config(data))


def test_truncated_shard_is_caught_by_its_manifest_byte_count(data: Path) -> None:
    shard = data / "train" / "train-000003.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(DataError, match=r"train-000003\.tar is 3000 bytes, but its manifest says"):
        preflight(config(data))


def test_truncated_shard_without_byte_count_is_not_a_readable_tar(data: Path) -> None:
    shard = data / "train" / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[:700])  # cut inside the first sample's image
    edit_manifest(data / "train", lambda m: [s.pop("bytes") for s in m["shards"]])
    with pytest.raises(DataError, match=r"train-000000\.tar is not a readable tar file"):
        preflight(config(data))


def test_label_outside_the_class_map_is_named(data: Path) -> None:
    rewrite_shard(data / "train", "train-000002.tar", [("a", jpeg(0), 0), ("b", jpeg(1), 7)])
    with pytest.raises(DataError, match=r"train-000002\.tar:b has label 7, outside \[0, 4\)"):
        preflight(config(data))


def test_image_of_the_wrong_size_is_named(data: Path) -> None:
    rewrite_shard(data / "val", "val-000000.tar", [("a", jpeg(0, size=24), 0)])
    with pytest.raises(DataError, match=r"val-000000\.tar:a is 24x24, but the manifest says 16x16"):
        preflight(config(data))


def test_train_and_val_class_maps_must_match(data: Path) -> None:
    edit_manifest(data / "val", lambda m: m["classes"].reverse())
    with pytest.raises(DataError, match=r"class maps differ: .*train/manifest\.json and .*val/manifest\.json"):
        preflight(config(data))


def test_model_num_classes_must_match_the_manifest(data: Path) -> None:
    with pytest.raises(DataError, match=r"num_classes is 10, but .*train/manifest\.json lists 4 classes"):
        preflight(config(data, num_classes=10))
    assert preflight(config(data, num_classes=4)).to_dict()["num_classes"] == 4


def test_too_few_shards_warns_how_readers_share_them(data: Path) -> None:
    report = preflight(config(data, workers=2, loader_workers=4))
    assert report.readers == 8
    [warning] = report.warnings
    assert "train has 4 shards for 8 readers (2 workers x 4 loader processes)" in warning
    assert "--shards 8" in warning


def test_shards_that_do_not_divide_evenly_are_shared_and_the_warning_says_what_it_costs(data: Path) -> None:
    report = preflight(config(data, workers=3, loader_workers=1))
    [warning] = report.warnings
    assert "train has 4 shards for 3 readers" in warning and "the 1 left over" in warning
    assert "work stays even" in warning and "--shards 3" in warning


def test_validating_on_training_shards_warns(data: Path) -> None:
    report = preflight(config(data, train_url=str(data / "train"), val_url=str(data / "train"), workers=1))
    assert any("validation reads training shards" in w for w in report.warnings)


def adt_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adt_tui.cli", "check", *args],
                          check=False, capture_output=True, text=True, timeout=60)


def test_adt_check_prints_the_report_and_exits_0(data: Path) -> None:
    done = adt_check("--data", str(data))
    assert done.returncode == 0, done.stderr
    assert f"train 80 samples in 4 shards: {data.resolve() / 'train'}" in done.stdout


def test_adt_check_exits_2_naming_a_corrupt_shard(data: Path) -> None:
    shard = data / "val" / "val-000000.tar"
    shard.write_bytes(os.urandom(shard.stat().st_size))
    done = adt_check("--data", str(data))
    assert done.returncode == 2 and "val-000000.tar is not a readable tar file" in done.stderr


def test_adt_check_exits_2_on_a_num_classes_mismatch(data: Path) -> None:
    done = adt_check("--data", str(data), "--num-classes", "3")
    assert done.returncode == 2 and "num_classes is 3" in done.stderr and "manifest.json" in done.stderr


def test_the_preflight_warns_of_the_measured_cost_of_many_workers_only(data: Path) -> None:
    assert not any("staleness" in w for w in preflight(config(data, workers=4)).warnings)
    [warning] = [w for w in preflight(config(data, workers=8)).warnings if "staleness" in w]
    assert "8 workers" in warning and "8.9 points" in warning and "Fix: 4 workers or fewer" in warning


def test_the_preflight_warns_of_what_overlap_costs_only_when_asked_for_with_workers(data: Path) -> None:
    assert not any("--overlap" in w for w in preflight(config(data, workers=4)).warnings)
    assert not any("--overlap" in w for w in preflight(config(data, workers=0, overlap=True)).warnings)
    [warning] = [w for w in preflight(config(data, workers=4, overlap=True)).warnings if "--overlap" in w]
    assert "2.2 and 3.8 points" in warning and "Fix: drop --overlap" in warning


def test_the_preflight_settles_and_says_the_rule_and_the_augmentation(data: Path) -> None:
    cfg = config(data, workers=4)
    lines = "\n".join(preflight(cfg).lines())
    assert cfg.update_rule == "dana-gap-aware" and cfg.augment in ("flip-crop", "crop")
    assert "update rule: dana-gap-aware (the default for 4 workers" in lines
    assert f"augment: {cfg.augment} (" in lines
