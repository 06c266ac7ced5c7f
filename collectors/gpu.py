"""The GPU sampler: utilization, memory, power and temperature per NVIDIA GPU, through NVML.

NVML (nvidia-ml-py, imported as ``pynvml``) sits behind a narrow seam, :class:`Nvml`, so tests
can hand in a fake; everything else here is the real code path. No driver, no GPU or no access
is a normal state: the sampler emits one ``SourceDown`` saying why and stops, never an error.
A reading a device does not support (power on many consumer cards) is ``None``.
NVML calls block, so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from llmtop.core.events import GpuSampled, SourceDown
from llmtop.core.requests import Emit

DEFAULT_HZ = 2.0


class NvmlUnavailable(Exception):
    """NVML cannot be used here; the message says why in words a user understands."""


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One device at one moment; ``None`` for what it does not report."""

    index: int
    name: str
    util_pct: float | None = None
    mem_used_bytes: int | None = None
    mem_total_bytes: int | None = None
    power_w: float | None = None
    temp_c: float | None = None


class Nvml(Protocol):
    """The seam: the few NVML operations the sampler and ``doctor`` need."""

    def init(self) -> None:
        """Raise ``NvmlUnavailable`` when there is no usable driver or library."""
        ...

    def device_count(self) -> int: ...

    def read(self, index: int) -> GpuReading: ...

    def driver_version(self) -> str | None: ...

    def shutdown(self) -> None: ...


NVML_LIBRARY = "libnvidia-ml.so.1"
"""What nvidia-ml-py loads on Linux; the driver installs it."""


def nvml_library_present() -> bool:
    """Whether the driver's NVML library loads. Asked before importing nvidia-ml-py, whose ~4,000
    lines of bindings cost ~7 ms of every run's start on the many machines without one."""
    if sys.platform != "linux":
        return True  # let nvidia-ml-py look where it knows to (Windows)
    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        return False
    return True


class PynvmlNvml:
    """The real NVML through nvidia-ml-py (imported at ``init``, where a driver is)."""

    def __init__(self) -> None:
        self._n: Any = None
        self._handles: dict[int, Any] = {}

    def init(self) -> None:
        if self._n is None:
            if not nvml_library_present():
                raise NvmlUnavailable("no NVIDIA driver (NVML library not found)")
            import pynvml

            self._n = pynvml
        n = self._n
        try:
            n.nvmlInit()
        except n.NVMLError_LibraryNotFound:
            raise NvmlUnavailable("no NVIDIA driver (NVML library not found)") from None
        except n.NVMLError_DriverNotLoaded:
            raise NvmlUnavailable("NVIDIA driver not loaded") from None
        except n.NVMLError_NoPermission:
            raise NvmlUnavailable("no access to the NVIDIA device nodes") from None
        except n.NVMLError as e:
            raise NvmlUnavailable(f"NVML error: {e}") from None

    def device_count(self) -> int:
        return int(self._n.nvmlDeviceGetCount())

    def _handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = self._n.nvmlDeviceGetHandleByIndex(index)
        return self._handles[index]

    def _try(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except self._n.NVMLError:
            return None  # NotSupported is common on consumer GPUs and in VMs

    def read(self, index: int) -> GpuReading:
        n, h = self._n, self._handle(index)
        name = self._try(lambda: n.nvmlDeviceGetName(h))
        util = self._try(lambda: n.nvmlDeviceGetUtilizationRates(h))
        mem = self._try(lambda: n.nvmlDeviceGetMemoryInfo(h))
        power_mw = self._try(lambda: n.nvmlDeviceGetPowerUsage(h))
        temp = None
        temp_v = getattr(n, "nvmlDeviceGetTemperatureV", None)  # absent in older bindings
        if temp_v is not None:
            temp = self._try(lambda: temp_v(h, n.NVML_TEMPERATURE_GPU))
        if temp is None:  # drivers older than the V call; the old one is deprecated
            temp = self._try(lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))
        return GpuReading(
            index=index,
            name=name.decode() if isinstance(name, bytes) else str(name or f"GPU {index}"),
            util_pct=None if util is None else float(util.gpu),
            mem_used_bytes=None if mem is None else int(mem.used),
            mem_total_bytes=None if mem is None else int(mem.total),
            power_w=None if power_mw is None else power_mw / 1000.0,
            temp_c=None if temp is None else float(temp),
        )

    def driver_version(self) -> str | None:
        v = self._try(self._n.nvmlSystemGetDriverVersion)
        return v.decode() if isinstance(v, bytes) else v

    def shutdown(self) -> None:
        self._try(self._n.nvmlShutdown)


def default_nvml() -> Nvml:
    return PynvmlNvml()


def inventory(nvml: Nvml | None = None) -> tuple[list[GpuReading], str | None, str | None]:
    """``(gpus, driver_version, why_none)`` right now, for ``doctor`` and the run's host info."""
    nv = nvml or default_nvml()
    try:
        nv.init()
    except NvmlUnavailable as e:
        return [], None, str(e)
    try:
        count = nv.device_count()
        gpus = [nv.read(i) for i in range(count)]
        driver = nv.driver_version()
    except Exception as e:  # a broken driver must not break doctor
        return [], None, f"NVML error: {e}"
    finally:
        nv.shutdown()
    return gpus, driver, None if gpus else "NVML works but reports no GPU"


class GpuSampler:
    """Samples every GPU at ``hz`` and emits one ``GpuSampled`` per device and tick."""

    source = "gpu"

    def __init__(
        self,
        run_id: int | None,
        *,
        hz: float = DEFAULT_HZ,
        nvml: Nvml | None = None,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        if hz <= 0:
            raise ValueError(f"hz must be > 0, got {hz}")
        self.run_id = run_id
        self.hz = hz
        self.clock = clock
        self._nvml = nvml
        self.reason: str | None = None
        """Why no GPU is sampled, once known."""
        self.ready = asyncio.Event()
        """Set once NVML is open (or known to be unusable)."""

    def _open(self) -> tuple[Nvml, int]:
        nv = self._nvml or default_nvml()
        nv.init()
        try:
            count = nv.device_count()
        except Exception as e:
            nv.shutdown()
            raise NvmlUnavailable(f"NVML error: {e}") from None
        if count == 0:
            nv.shutdown()
            raise NvmlUnavailable("NVML works but reports no GPU")
        return nv, count

    def _read_all(self, nv: Nvml, count: int) -> list[GpuSampled]:
        t = self.clock()
        out = []
        for i in range(count):
            r = nv.read(i)
            out.append(
                GpuSampled(
                    run_id=self.run_id, t_ns=t, gpu=i, name=r.name, util_pct=r.util_pct,
                    mem_used_bytes=r.mem_used_bytes, mem_total_bytes=r.mem_total_bytes,
                    power_w=r.power_w, temp_c=r.temp_c,
                )
            )  # fmt: skip
        return out

    async def run(self, emit: Emit) -> None:
        """Sample until cancelled; without a usable GPU, one ``SourceDown`` and return."""
        try:
            nv, count = await asyncio.to_thread(self._open)
        except NvmlUnavailable as e:
            self.reason = str(e)
            emit(SourceDown(self.run_id, self.clock(), self.source, self.reason))
            return
        finally:
            self.ready.set()
        loop = asyncio.get_running_loop()
        period = 1.0 / self.hz
        start, tick = loop.time(), 0
        failing = False
        try:
            while True:
                try:
                    for ev in await asyncio.to_thread(self._read_all, nv, count):
                        emit(ev)
                    failing = False
                except Exception as e:  # a GPU fallen off the bus: say so once, keep trying
                    if not failing:
                        emit(SourceDown(self.run_id, self.clock(), self.source, f"NVML: {e}"))
                    failing = True
                tick += 1
                delay = start + tick * period - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    tick = int((loop.time() - start) / period)
        finally:
            await asyncio.to_thread(nv.shutdown)
