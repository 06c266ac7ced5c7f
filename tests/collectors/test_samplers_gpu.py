"""The GPU sampler: NVML faked behind its seam (no GPU here), and the real no-driver path."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import types

import pytest
from support.collect import collect_events

from llmtop.collectors.gpu import GpuReading, GpuSampler, NvmlUnavailable, PynvmlNvml, inventory
from llmtop.core.events import GpuSampled, SourceDown

GIB = 1 << 30


class FakeNvml:
    """The seam's contract with canned devices; ``broken`` devices raise on their first
    ``heal_after`` reads, then work."""

    def __init__(self, readings, unavailable=None, broken=(), heal_after=0):
        self.readings = readings
        self.unavailable = unavailable
        self.broken = set(broken)
        self.heal_after = heal_after
        self.failed_reads = 0
        self.shut = 0

    def init(self):
        if self.unavailable:
            raise NvmlUnavailable(self.unavailable)

    def device_count(self):
        return len(self.readings)

    def read(self, index):
        if index in self.broken and self.failed_reads < self.heal_after:
            self.failed_reads += 1
            raise RuntimeError("GPU has fallen off the bus")
        return self.readings[index]

    def driver_version(self):
        return "550.54"

    def shutdown(self):
        self.shut += 1


TWO = [
    GpuReading(0, "NVIDIA H100", 87.0, 30 * GIB, 80 * GIB, 412.5, 61.0),
    GpuReading(1, "NVIDIA L4", 5.0, 1 * GIB, 24 * GIB, None, 40.0),  # no power reading
]


async def collect(sampler, n_samples, timeout=30):
    """Run ``sampler`` until it has taken ``n_samples`` GPU samples."""
    return await collect_events(
        sampler, lambda got: sum(isinstance(e, GpuSampled) for e in got) >= n_samples, timeout
    )


async def test_every_gpu_is_sampled_each_tick_with_none_for_what_it_lacks():
    nv = FakeNvml(TWO)
    got = await collect(GpuSampler(3, hz=50, nvml=nv), 4)
    samples = [e for e in got if isinstance(e, GpuSampled)]
    assert [s.gpu for s in samples[:4]] == [0, 1, 0, 1]
    h100, l4 = samples[0], samples[1]
    assert (h100.run_id, h100.name, h100.util_pct, h100.mem_used_bytes, h100.power_w) == (
        3, "NVIDIA H100", 87.0, 30 * GIB, 412.5
    )  # fmt: skip
    assert l4.power_w is None and l4.temp_c == 40.0
    assert samples[0].t_ns == samples[1].t_ns  # one tick, one time
    assert nv.shut == 1  # NVML is shut down when sampling stops


async def test_no_driver_is_one_source_down_and_the_sampler_ends():
    sampler = GpuSampler(
        1, nvml=FakeNvml([], unavailable="no NVIDIA driver (NVML library not found)")
    )
    got = []
    await asyncio.wait_for(sampler.run(got.append), 5)  # returns by itself
    assert len(got) == 1 and isinstance(got[0], SourceDown)
    assert got[0].source == "gpu" and "no NVIDIA driver" in got[0].reason
    assert sampler.reason == got[0].reason


async def test_zero_gpus_is_reported_the_same_way():
    got = []
    await asyncio.wait_for(GpuSampler(1, nvml=FakeNvml([])).run(got.append), 5)
    assert [type(e) for e in got] == [SourceDown] and "no GPU" in got[0].reason


async def test_a_failing_read_is_reported_once_and_sampling_goes_on():
    nv = FakeNvml(TWO, broken={1}, heal_after=5)
    got = await collect(GpuSampler(1, hz=200, nvml=nv), 2)
    assert nv.failed_reads == 5  # five ticks failed in a row...
    downs = [e for e in got if isinstance(e, SourceDown)]
    assert len(downs) == 1 and "fallen off the bus" in downs[0].reason  # ...said once
    assert isinstance(got[-1], GpuSampled)  # and it came back


def test_the_real_nvml_here_reports_why_there_is_no_gpu():
    gpus, _driver, why = inventory()
    if gpus:
        pytest.skip("this machine has an NVIDIA GPU")
    assert why and ("NVIDIA" in why or "NVML" in why)
    got = []
    asyncio.run(asyncio.wait_for(GpuSampler(1).run(got.append), 5))
    assert [type(e) for e in got] == [SourceDown] and got[0].reason == why


def test_without_the_driver_library_nvidia_ml_py_is_not_loaded():
    """Where libnvidia-ml does not load, the answer comes without importing the bindings (~7 ms
    of every start); where it loads, they are imported and asked."""
    code = (
        "import sys; from llmtop.collectors.gpu import inventory, nvml_library_present; "
        "gpus, _, why = inventory(); "
        "print(nvml_library_present(), 'pynvml' in sys.modules, why)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    present, loaded, why = out.stdout.split(" ", 2)
    assert loaded == present  # the bindings loaded exactly when the library is there
    if present == "False":
        assert why.strip() == "no NVIDIA driver (NVML library not found)"


def test_inventory_through_the_seam():
    gpus, driver, why = inventory(FakeNvml(TWO))
    assert [g.name for g in gpus] == ["NVIDIA H100", "NVIDIA L4"] and driver == "550.54"
    assert why is None
    assert inventory(FakeNvml([], unavailable="NVIDIA driver not loaded"))[2] == (
        "NVIDIA driver not loaded"
    )


def fake_pynvml(power_error: bool, has_temperature_v: bool):
    """A stand-in for the pynvml module at its call boundary (for PynvmlNvml's mapping)."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    def power(h):
        if power_error:
            raise NVMLError_NotSupported("Not Supported")
        return 250_000

    m = types.SimpleNamespace(
        NVMLError=NVMLError,
        NVML_TEMPERATURE_GPU=0,
        nvmlDeviceGetHandleByIndex=lambda i: f"h{i}",
        nvmlDeviceGetName=lambda h: b"Tesla T4",
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=42, memory=10),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=2 * GIB, total=16 * GIB),
        nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetTemperature=lambda h, s: 55,
    )
    if has_temperature_v:
        m.nvmlDeviceGetTemperatureV = lambda h, s: 56
    return m


@pytest.mark.parametrize(("power_error", "temp_v"), [(False, True), (True, False)])
def test_pynvml_mapping_turns_unsupported_readings_into_none(power_error, temp_v):
    real = PynvmlNvml()
    real._n = fake_pynvml(power_error, temp_v)
    r = real.read(0)
    assert (r.name, r.util_pct, r.mem_used_bytes, r.mem_total_bytes) == (
        "Tesla T4", 42.0, 2 * GIB, 16 * GIB
    )  # fmt: skip
    assert r.power_w == (None if power_error else 250.0)
    assert r.temp_c == (56.0 if temp_v else 55.0)  # the deprecated call only as a fallback
