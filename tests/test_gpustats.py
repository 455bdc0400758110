"""GPU columns (adt_tui/gpustats.py): from NVML when there is one, gone without an error when not."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from adt_tui.app import AdtApp
from adt_tui.gpustats import GpuStats, GpuUsage
from adt_tui.panels import columns

RUN = Path(__file__).parent / "fixtures" / "run"
GIB = 2**30


class FakeNvml:
    """The slice of pynvml that GpuStats uses: two GPUs, worker pid 101 on GPU 1 (with a child)."""

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list:
        return [SimpleNamespace(pid=101, usedGpuMemory=3 * GIB),
                SimpleNamespace(pid=102, usedGpuMemory=1 * GIB)] if handle == 1 else []

    def nvmlDeviceGetProcessUtilization(self, handle: int, since: int) -> list:
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")  # as on many GPUs: device numbers instead

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=87 if handle == 1 else 5)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=10 * GIB)

    def nvmlShutdown(self) -> None:
        pass


def test_without_nvml_there_is_nothing_to_sample() -> None:
    stats = GpuStats(load=False)
    assert not stats.available and stats.sample({1: [1, 2]}) == {}


def test_missing_pynvml_module_means_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pynvml(name: str, *args, **kwargs):
        if name == "pynvml":
            raise ImportError("No module named 'pynvml'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    assert not GpuStats().available


def test_a_process_tree_sums_its_memory_on_its_device() -> None:
    stats = GpuStats(nvml=FakeNvml())
    usage = stats.sample({100: [100, 101, 102], 200: [200]})
    assert usage == {100: GpuUsage(1, 4 * GIB, 87.0)}


def test_a_process_nvml_cannot_see_gets_its_device_numbers() -> None:
    stats = GpuStats(nvml=FakeNvml())
    usage = stats.sample({300: [300]}, devices={300: 0})
    assert usage == {300: GpuUsage(0, 10 * GIB, 5.0, device_wide=True)}


def test_gpu_columns_only_when_a_process_uses_a_gpu() -> None:
    assert "gpu_mem" not in [c.key for c in columns(narrow=False, gpu=False)]
    assert [c.key for c in columns(narrow=True, gpu=True)][-3:] == ["gpu", "gpu_mem", "gpu_util"]


@pytest.mark.anyio
async def test_screen_without_nvml_has_no_gpu_columns_and_with_usage_shows_them() -> None:
    app = AdtApp(run_dir=RUN, gpu=GpuStats(load=False))
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        labels = [str(c.label) for c in app.table.columns.values()]
        assert "cpu" in labels and "gpu mem" not in labels
        # As the stats timer would set it for a live worker on GPU 1:
        app.gpus = {app.state.workers[0].pid: GpuUsage(1, 3 * GIB, 87.0)}
        app._drawn = -1
        app.draw()
        await pilot.pause()
        labels = [str(c.label) for c in app.table.columns.values()]
        assert labels[-3:] == ["gpu", "gpu mem", "gpu util"]
        assert str(app.table.get_cell("w0", "gpu_mem")) == "3.0 GiB"
        assert str(app.table.get_cell("w1", "gpu")) == "—"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
