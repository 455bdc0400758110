"""`adt data prepare`: Tiny ImageNet and ImageFolder trees become shard sets a run can trust."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from engine.errors import DataError
from engine.prepare import default_shard_count, prepare
from engine.synth import make_image

# Deliberately not sorted: labels must follow wnids.txt order, not name order.
WNIDS = ["n09999999", "n01443537", "n05555555", "n02123045", "n01000001"]
SIZE = 32


def _save(path: Path, image: Image.Image, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, quality=90)


def make_tiny_imagenet(root: Path, train_per_class: int = 30, val_per_class: int = 8) -> Path:
    """A small tree in the real Tiny ImageNet layout, with class-dependent images."""
    top = root / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    (top / "val" / "images").mkdir(parents=True)
    (top / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    words = [f"{w}\tthing number {i}" for i, w in enumerate(WNIDS)] + ["n00000000\tnot used"]
    (top / "words.txt").write_text("\n".join(words) + "\n")
    for label, wnid in enumerate(WNIDS):
        for i in range(train_per_class):
            _save(top / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", make_image(label, 5, SIZE, rng))
        (top / "train" / wnid / f"{wnid}_boxes.txt").write_text("not an image\n")
    # Tiny ImageNet has some greyscale JPEGs; they must come out as RGB.
    grey = make_image(0, 5, SIZE, rng).convert("L")
    _save(top / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_{train_per_class - 1}.JPEG", grey)
    lines = []
    for i in range(val_per_class * len(WNIDS)):
        label = (i * 3) % len(WNIDS)  # interleaved, so val order says nothing about the class
        _save(top / "val" / "images" / f"val_{i}.JPEG", make_image(label, 5, SIZE, rng))
        lines.append(f"val_{i}.JPEG\t{WNIDS[label]}\t0\t0\t{SIZE - 1}\t{SIZE - 1}")
    (top / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return top


def make_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "eel"),
                      train_per_class: int = 12, val_per_class: int = 4, size: int = SIZE) -> Path:
    rng = np.random.default_rng(1)
    for label, name in enumerate(classes):
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            for i in range(count):
                _save(root / split / name / f"{name}_{i}.png", make_image(label, 3, size, rng), "PNG")
    return root


def read_split(split_dir: Path) -> tuple[dict, list[dict]]:
    manifest = json.loads((split_dir / "manifest.json").read_text())
    urls = [str(split_dir / s["name"]) for s in manifest["shards"]]
    return manifest, list(wds.WebDataset(urls, shardshuffle=False))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("src")
    src = make_tiny_imagenet(root)
    out = root / "wds"
    prepare(src, out, shards=4, progress=False)
    return src, out


def test_tiny_imagenet_counts_keys_and_one_class_map(tiny: tuple[Path, Path]) -> None:
    _, out = tiny
    train_manifest, train = read_split(out / "train")
    val_manifest, val = read_split(out / "val")
    assert (train_manifest["num_samples"], len(train)) == (150, 150)
    assert (val_manifest["num_samples"], len(val)) == (40, 40)
    assert [s["count"] for s in train_manifest["shards"]] == [38, 38, 37, 37]
    assert train_manifest["classes"] == val_manifest["classes"] == WNIDS
    assert train_manifest["descriptions"][WNIDS[1]] == "thing number 1"
    assert "n00000000" not in train_manifest["descriptions"]
    assert train_manifest["image_size"] == [SIZE, SIZE] and train_manifest["content_hash"]
    keys = [s["__key__"] for s in train + val]
    assert len(set(keys)) == len(keys) and not any("." in k for k in keys)
    assert sorted(int(s["cls"]) for s in train) == sorted(list(range(5)) * 30)


def test_val_labels_follow_annotations_through_wnids_order(tiny: tuple[Path, Path]) -> None:
    src, out = tiny
    _, val = read_split(out / "val")
    expected = {}
    for line in (src / "val" / "val_annotations.txt").read_text().splitlines():
        name, wnid = line.split("\t")[:2]
        expected[(src / "val" / "images" / name).read_bytes()] = WNIDS.index(wnid)
    # Val images are already 32x32 RGB JPEGs, so their bytes identify the source file.
    assert {bytes(s["jpg"]): int(s["cls"]) for s in val} == expected


def test_right_size_rgb_jpegs_keep_their_bytes_and_grey_ones_become_rgb(tiny: tuple[Path, Path]) -> None:
    src, out = tiny
    _, train = read_split(out / "train")
    originals = {p.read_bytes() for p in (src / "train").rglob("*.JPEG")}
    kept = [s for s in train if bytes(s["jpg"]) in originals]
    assert len(kept) == 149  # all but the greyscale one
    modes = {Image.open(io.BytesIO(s["jpg"])).mode for s in train}
    assert modes == {"RGB"}


def test_training_samples_are_shuffled_across_shards(tiny: tuple[Path, Path]) -> None:
    _, out = tiny
    _, train = read_split(out / "train")
    first_shard = [int(s["cls"]) for s in train[:38]]
    assert len(set(first_shard)) == 5  # class-sorted shards would hold one or two classes
    labels = [int(s["cls"]) for s in train]
    assert labels != sorted(labels)


def _contents(split_dir: Path) -> list[tuple[str, str, bytes]]:
    return [(s["__key__"], s["cls"].decode(), bytes(s["jpg"])) for s in read_split(split_dir)[1]]


def test_same_seed_gives_the_same_shards_and_another_seed_does_not(
        tiny: tuple[Path, Path], tmp_path: Path) -> None:
    # Compares samples, not content_hash: tar headers carry write times.
    src, out = tiny
    prepare(src, tmp_path / "again", shards=4, progress=False)
    prepare(src, tmp_path / "other", shards=4, seed=1, progress=False)
    first = _contents(out / "train")
    assert _contents(tmp_path / "again" / "train") == first != _contents(tmp_path / "other" / "train")


def test_src_may_be_the_directory_holding_tiny_imagenet(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = tiny
    result = prepare(src.parent, tmp_path / "out", progress=False)
    assert result.layout == "Tiny ImageNet" and result.manifests["val"]["num_samples"] == 40


def test_size_resizes_every_image(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = tiny
    prepare(src, tmp_path / "small", size=16, progress=False)
    manifest, val = read_split(tmp_path / "small" / "val")
    assert manifest["image_size"] == [16, 16]
    assert {Image.open(io.BytesIO(s["jpg"])).size for s in val} == {(16, 16)}


def test_image_folder_tree_uses_sorted_class_folders_for_both_splits(tmp_path: Path) -> None:
    src = make_image_folder(tmp_path / "folder")
    result = prepare(src, tmp_path / "out", progress=False)
    assert result.layout == "ImageFolder"
    train_manifest, train = read_split(tmp_path / "out" / "train")
    val_manifest, val = read_split(tmp_path / "out" / "val")
    assert train_manifest["classes"] == val_manifest["classes"] == ["cat", "dog", "eel"]
    assert (len(train), len(val)) == (36, 12)
    assert sorted(int(s["cls"]) for s in val) == [0] * 4 + [1] * 4 + [2] * 4
    assert {Image.open(io.BytesIO(s["jpg"])).format for s in val} == {"JPEG"}  # PNGs re-encoded


def test_mixed_sizes_without_size_fail_naming_the_file_and_leave_no_output(tmp_path: Path) -> None:
    src = make_image_folder(tmp_path / "folder")
    odd = src / "val" / "dog" / "dog_odd.png"
    _save(odd, make_image(1, 3, 24, np.random.default_rng(2)), "PNG")
    with pytest.raises(DataError, match=r"dog_odd\.png is 24x24.*--size"):
        prepare(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_failed_prepare_keeps_the_previous_output(tmp_path: Path) -> None:
    src = make_image_folder(tmp_path / "folder")
    before = prepare(src, tmp_path / "out", progress=False).manifests["train"]["content_hash"]
    (src / "val" / "cat" / "cat_0.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cat_0\.png does not decode"):
        prepare(src, tmp_path / "out", seed=5, progress=False)
    after = json.loads((tmp_path / "out" / "train" / "manifest.json").read_text())["content_hash"]
    assert after == before and sorted(os.listdir(tmp_path)) == ["folder", "out"]


def test_val_wnid_missing_from_wnids_is_an_error(tmp_path: Path) -> None:
    src = make_tiny_imagenet(tmp_path, train_per_class=2, val_per_class=1)
    annotations = src / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_0.JPEG\tn07777777\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"val_annotations\.txt line 6: val_0\.JPEG has class n07777777"):
        prepare(src, tmp_path / "out", progress=False)


def test_missing_val_annotations_is_named(tmp_path: Path) -> None:
    src = make_tiny_imagenet(tmp_path, train_per_class=2, val_per_class=1)
    (src / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataError, match=r"val_annotations\.txt is missing"):
        prepare(src, tmp_path / "out", progress=False)


def test_refuses_to_overwrite_a_directory_that_is_not_a_shard_set(tmp_path: Path) -> None:
    src = make_image_folder(tmp_path / "folder", train_per_class=2, val_per_class=1)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not an adt shard set"):
        prepare(src, tmp_path / "precious", progress=False)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_default_shard_count_gives_every_reader_equal_shards() -> None:
    assert default_shard_count(100_000, workers=2, loader_workers=1) == 8
    assert default_shard_count(100_000, workers=3, loader_workers=4) == 12
    assert default_shard_count(100_000, workers=3, loader_workers=1) == 9
    assert default_shard_count(1_281_167, workers=4, loader_workers=2) == 72


def adt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adt_tui.cli", *args],
                          check=False, capture_output=True, text=True, timeout=120)


def test_cli_prepare_names_the_missing_layout_file_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = adt("data", "prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "wnids.txt is missing" in done.stderr and "train/<class>/ is missing" in done.stderr


def test_cli_prepare_writes_shards_that_pass_check(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    src, _ = tiny
    done = adt("data", "prepare", str(src), "--out", str(tmp_path / "out"), "--shards", "4")
    assert done.returncode == 0, done.stderr
    assert "150 samples in 4 shards" in done.stdout
    done = adt("check", "--data", str(tmp_path / "out"), "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / "out" / "train") in done.stdout


def test_a_model_trained_on_prepared_shards_beats_chance_on_prepared_val(
        tiny: tuple[Path, Path], tmp_path: Path) -> None:
    # The end-to-end proof that train and val labels mean the same thing: scrambled val labels
    # (or a class map differing between splits) would hold accuracy near chance, 20%.
    _, out = tiny
    done = adt("run", "--no-ui", "--workers", "0", "--loader-workers", "0", "--data", str(out),
               "--epochs", "8", "--batch-size", "16", "--run-id", "prep", "--device", "cpu",
               "--runs-dir", str(tmp_path / "runs"), "--checkpoints-dir", str(tmp_path / "ckpt"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    events = [json.loads(line) for line in (tmp_path / "runs" / "prep" / "events.jsonl").open()]
    validations = [e for e in events if e["kind"] == "validation"]
    assert all(e["count"] == 40 and e["chance"] == pytest.approx(0.2) for e in validations)
    assert max(e["acc"] for e in validations) >= 0.7, validations
