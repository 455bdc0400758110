"""The placement plan: (GPUs present, flags) -> where each process runs, with the GPU count
injected (no GPU needed), and the placements that cannot work refused by field."""

from __future__ import annotations

import pytest

from engine.config import ConfigError, RunConfig
from engine.placement import apply, loader_processes, local_slot, plan

CPUS = 32


def placed(gpus: int, local_workers: int | None = None, **flags) -> tuple:
    p = plan(RunConfig(**flags).validate(), gpus, CPUS, local_workers)
    return p.workers, p.worker_devices, p.ps_device


@pytest.mark.parametrize("gpus, flags, expected", [
    # no GPU: everything on the CPU, the PS and two workers as before
    (0, {}, (2, ("cpu", "cpu"), "cpu")),
    (0, {"workers": 0}, (0, (), "cpu")),
    # one GPU: one process trains (fastest to the same accuracy, docs/BENCHMARKS.md)
    (1, {}, (0, (), "cuda:0")),
    (1, {"workers": 2}, (2, ("cuda:0", "cuda:0"), "cuda:0")),
    # two or more: one worker per GPU, the PS beside worker 0 unless a GPU is spare
    (2, {}, (2, ("cuda:0", "cuda:1"), "cuda:0")),
    (4, {}, (4, ("cuda:0", "cuda:1", "cuda:2", "cuda:3"), "cuda:0")),
    (3, {"workers": 2}, (2, ("cuda:0", "cuda:1"), "cuda:2")),
    (2, {"workers": 4}, (4, ("cuda:0", "cuda:1", "cuda:0", "cuda:1"), "cuda:0")),
    (2, {"workers": 1}, (1, ("cuda:0",), "cuda:1")),
    # what the user pins stays pinned
    (2, {"device": "cuda:1", "workers": 2}, (2, ("cuda:1", "cuda:1"), "cuda:0")),
    (2, {"ps_device": "cuda:1"}, (2, ("cuda:0", "cuda:1"), "cuda:1")),
    (2, {"device": "cpu"}, (2, ("cpu", "cpu"), "cpu")),
    (2, {"device": "cpu", "workers": 0}, (0, (), "cpu")),
    (1, {"device": "cpu", "ps_device": "cuda"}, (2, ("cpu", "cpu"), "cuda:0")),
])
def test_placement_table(gpus, flags, expected):
    assert placed(gpus, **flags) == expected


@pytest.mark.parametrize("gpus, flags, field, words", [
    (0, {"device": "cuda"}, "device", "torch sees no CUDA GPU"),
    (0, {"device": "cpu", "ps_device": "cuda"}, "ps_device", "torch sees no CUDA GPU"),
    (2, {"device": "cuda:3"}, "device", "this machine has 2 GPUs (cuda:0..cuda:1)"),
    (2, {"ps_device": "cuda:2"}, "ps_device", "this machine has 2 GPUs"),
    (2, {"ps_device": "cpu"}, "ps_device", "while the workers train on cuda"),
    (1, {"workers": 2, "ps_device": "cpu"}, "ps_device", "0.09x DDP"),
])
def test_placements_that_cannot_work_are_refused_by_field(gpus, flags, field, words):
    with pytest.raises(ConfigError) as caught:
        placed(gpus, **flags)
    assert caught.value.field == field and words in str(caught.value) and "Fix:" in str(caught.value)


def test_a_cpu_ps_is_fine_for_cpu_workers_and_a_single_gpu_process():
    assert placed(0, ps_device="cpu") == (2, ("cpu", "cpu"), "cpu")
    assert placed(1, ps_device="cpu", workers=0) == (0, (), "cuda:0")  # no PS at all


def test_loader_processes_split_the_spare_cores_over_gpu_processes_only():
    assert loader_processes(32, 2, on_gpu=True) == 12  # capped
    assert loader_processes(16, 4, on_gpu=True) == 2
    assert loader_processes(2, 2, on_gpu=True) == 1
    assert loader_processes(32, 2, on_gpu=False) == 1  # CPU training needs the cores itself
    assert plan(RunConfig(loader_workers=3), 2, CPUS).loader_workers == 3  # given: kept


def test_preflight_line_names_every_process():
    line = plan(RunConfig(), 2, CPUS).describe()
    assert line == ("placement: worker 0 -> cuda:0, worker 1 -> cuda:1, PS -> cuda:0, "
                    "12 loader processes each")
    assert plan(RunConfig(), 1, 16).describe() == "placement: one process -> cuda:0, 12 loader processes"


def test_apply_writes_concrete_devices_into_the_config():
    config = RunConfig()
    apply(config, plan(config, 2, CPUS))
    assert (config.device, config.ps_device, config.workers, config.loader_workers) == ("cuda", "cuda:0", 2, 12)
    config = RunConfig()
    apply(config, plan(config, 1, CPUS))
    assert (config.device, config.ps_device, config.workers) == ("cuda:0", "cuda:0", 0)
    config = RunConfig()
    apply(config, plan(config, 0, CPUS))
    assert (config.device, config.ps_device, config.workers, config.loader_workers) == ("cpu", "cpu", 2, 1)
    assert RunConfig.from_dict(config.to_dict()).validate() == config  # what config.json holds


def test_launch_places_each_node_s_workers_by_local_rank():
    # node 0: local rank 0 is the PS, so its workers are slots 0..; other nodes start at local rank 0
    assert [local_slot(0, {"LOCAL_RANK": str(r), "GROUP_RANK": "0"}) for r in (1, 2)] == [0, 1]
    assert [local_slot(5, {"LOCAL_RANK": str(r), "GROUP_RANK": "1"}) for r in (0, 1)] == [0, 1]
    assert local_slot(3, {}) == 3  # adt run: the worker index
    # node 0 of `adt launch --nproc-per-node 3` on 2 GPUs: two local workers and the PS
    assert placed(2, local_workers=2, workers=5) == (5, ("cuda:0", "cuda:1"), "cuda:0")


def test_no_module_reads_settings_the_config_holds_from_environment_variables():
    """Devices once travelled as ADT_DEVICE/ADT_PS_DEVICE, which only the local supervisor set, so
    `adt launch` never told its processes their devices. Settings live in the run's config."""
    import dataclasses
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    settings = {f.name.upper() for f in dataclasses.fields(RunConfig)}
    found = {}
    for path in [*root.glob("engine/*.py"), *root.glob("adt_tui/*.py")]:
        for name in re.findall(r"\bADT_([A-Z_]+)", path.read_text()):
            found.setdefault(name, path.name)
    assert set(found) <= {"PROFILE"}, found  # ADT_PROFILE: a profiler switch, not a run setting
    assert not settings & set(found)


def test_a_placement_that_cannot_work_exits_2_before_anything_starts(tiny_data, tmp_path):
    import subprocess

    from .conftest import adt_command, child_env

    done = subprocess.run(adt_command("run", "--no-ui", "--data", str(tiny_data), "--device", "cuda:99",
                                      "--runs-dir", str(tmp_path / "runs")),
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "'device' is 'cuda:99'" in done.stderr and "Fix:" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "runs").exists()
