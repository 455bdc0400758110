"""Your model: torchvision names, a file's `build`, a package's `build`; every bad one stops the run
before anything starts (exit 2, one paragraph naming `model`); the job's own files are
fingerprinted and watched like adt's code.

Jobs here are real (`adt run --no-ui` in a child process) on the tiny data, with one worker.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from torch import nn

from adt_tui.cli import main
from engine.config import RunConfig
from engine.models import build_model, check_model

from .jobs import FAST, HeadlessJob, latency, wait_for

LINEAR = """\
from torch import nn


def build(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, num_classes))
"""


def config(**values: object) -> RunConfig:
    return RunConfig.from_dict(values).validate()


# --- names ---------------------------------------------------------------------------------
def test_torchvision_names_build_for_the_datas_classes_and_size() -> None:
    line = check_model(config(model="mobilenet_v3_small"), 4, (16, 16))
    assert line.startswith("model ok: mobilenet_v3_small") and "16x16 -> 4 classes" in line


@pytest.mark.parametrize("setting, size, kernel", [
    ("auto", (64, 64), 3), ("auto", (96, 96), 7), ("off", (16, 16), 7), ("on", (224, 224), 3),
])
def test_resnets_get_the_small_input_stem_on_small_images(setting, size, kernel) -> None:
    model = build_model("resnet18", 4, size, setting)
    assert model.conv1.kernel_size == (kernel, kernel)
    assert isinstance(model.maxpool, nn.Identity) == (kernel == 3)


def test_resnet18_keeps_the_shapes_of_adts_64px_resnet() -> None:
    """Checkpoints of earlier runs (`--model resnet18` on 64 px) still resume."""
    model = build_model("resnet18", 200, (64, 64))
    assert model.conv1.weight.shape == (64, 3, 3, 3) and model.fc.weight.shape == (200, 512)


def test_small_input_stem_on_is_for_resnets_only() -> None:
    with pytest.raises(Exception, match="'small_input_stem' is 'on', but model 'cnn' is not"):
        config(small_input_stem="on")


# --- your own ------------------------------------------------------------------------------
def test_a_users_file_trains_and_its_file_is_fingerprinted(tiny_data, tmp_path) -> None:
    model = tmp_path / "linear_model.py"
    model.write_text(LINEAR)
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), "--model", f"{model}:build", "--workers", "1",
                      "--epochs", "1", "--max-updates", "10", *FAST)
    assert job.wait(180) == 0, job.context()
    (start,) = job.events("run_start")
    assert start["model"] == f"{model}:build"
    assert str(model.resolve()) in start["code"]["covers"]
    (joined,) = job.events("worker_join")
    assert joined["code_fingerprint"] == start["code"]["fingerprint"]  # it imported the same file
    assert not [a for a in job.events("alert") if a["code"] == "fingerprint_mismatch"]


def test_a_package_module_is_imported_by_every_process(tiny_data, tmp_path) -> None:
    package = tmp_path / "zoo"
    (package / "nets").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets" / "__init__.py").write_text("")
    (package / "nets" / "layers.py").write_text("WIDTH = 3 * 16 * 16\n")
    (package / "nets" / "linear.py").write_text(  # a relative import: it is imported as a package
        "from torch import nn\n\nfrom .layers import WIDTH\n\n\n"
        "def make(num_classes):\n    return nn.Sequential(nn.Flatten(), nn.Linear(WIDTH, num_classes))\n")
    job = HeadlessJob(tmp_path, "--data", str(tiny_data), "--model", "zoo.nets.linear:make", "--workers", "1",
                      "--epochs", "1", "--max-updates", "10", *FAST, cwd=tmp_path)
    assert job.wait(180) == 0, job.context()
    (start,) = job.events("run_start")
    assert str(package.resolve()) in start["code"]["covers"]  # the whole package, not one file
    (joined,) = job.events("worker_join")
    assert joined["code_fingerprint"] == start["code"]["fingerprint"]


def test_a_file_in_a_package_is_imported_as_its_module(tmp_path) -> None:
    package = tmp_path / "kit"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sizes.py").write_text("CLASSES_EXTRA = 0\n")
    (package / "net.py").write_text(LINEAR.replace("from torch import nn", "from torch import nn\n\n"
                                                   "from .sizes import CLASSES_EXTRA"))
    line = check_model(config(model=f"{package / 'net.py'}:build"), 4, (16, 16))
    assert line.startswith("model ok")


# --- bad models: exit 2 before anything starts ---------------------------------------------
BAD = {
    "unknown-name": ("resnet5", None, "did you mean resnet50"),
    "missing-file": ("{tmp}/nowhere.py:build", None, "does not exist"),
    "missing-function": ("{tmp}/m_nofn.py:build", "def make(num_classes):\n    return None\n",
                         "has no function 'build'"),
    "not-a-module": ("{tmp}/m_int.py:build", "def build(num_classes):\n    return 42\n",
                     "not a torch.nn.Module"),
    "import-raises": ("{tmp}/m_raises.py:build", "import torch\nraise RuntimeError('no GPU here')\n",
                      "RuntimeError: no GPU here (m_raises.py, line 2)"),
    "wrong-columns": ("{tmp}/m_cols.py:build", LINEAR.replace(", num_classes)", ", 7)"),
                      "not (2, 4)"),
    "forward-fails": ("squeezenet1_0", None, "forward pass"),  # 16 px is too small for it
    "no-such-module": ("zoo_missing.nets:build", None, "no module 'zoo_missing.nets'"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_model_exits_2_with_one_paragraph_naming_the_field(case, tiny_data, tmp_path, capsys) -> None:
    spec, source, problem = BAD[case]
    spec = spec.format(tmp=tmp_path)
    if source is not None:
        Path(spec.rsplit(":", 1)[0]).write_text(source)
    code = main(["run", "--no-ui", "--data", str(tiny_data), "--model", spec,
                 "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("adt: config error: 'model'") and spec in err and "Fix:" in err
    assert problem in err, err
    assert "\n" not in err and "Traceback" not in err  # one paragraph
    assert not (tmp_path / "runs").exists()  # nothing started


# --- stale: the job's own files ------------------------------------------------------------
def test_headless_names_the_changed_model_file_and_config_keys(tiny_data, tmp_path, record_property) -> None:
    model = tmp_path / "my_model.py"
    model.write_text(LINEAR)
    toml = tmp_path / "adt.toml"
    toml.write_text("epochs = 50\nlr = 0.05\n")
    job = HeadlessJob(tmp_path, "--config", str(toml), "--data", str(tiny_data), "--model", f"{model}:build",
                      "--workers", "0", *FAST)
    job.wait_event("worker_metrics", 120)
    assert str(toml.resolve()) in job.events("run_start")[0]["code"]["covers"]

    def warnings() -> list[str]:
        return [line for line in job.lines if line.startswith("WARNING:") and "changed under" in line]

    saved = time.monotonic()
    toml.write_text("epochs = 50\nlr = 0.1\nwarmup = 0\n")
    wait_for("the config warning", warnings, 30, job.context)
    latency(record_property, "config edit -> headless warning", time.monotonic() - saved)
    assert warnings()[0].startswith("WARNING: config changed under the running job: "
                                    "adt.toml (config changed: lr, warmup); restart to use it")
    with open(model, "a") as f:
        f.write("# wider next time\n")
    wait_for("the model warning", lambda: len(warnings()) == 2, 30, job.context)
    assert warnings()[1].startswith("WARNING: source changed under the running job: my_model.py;")
    job.proc.send_signal(signal.SIGINT)
    assert job.wait(60) == 130, job.context()
