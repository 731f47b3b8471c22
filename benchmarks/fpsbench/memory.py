"""Peak host (and GPU) memory over a block of work."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from fpsbench.results import MemoryPeak


def _proc_status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_mib() -> float | None:
    kib = _proc_status_kib("VmRSS")
    return None if kib is None else kib / 1024.0


class PeakMemory:
    """Peak host resident set (and, on CUDA, GPU memory) over a block of work; ``result`` after it.

    Host: Linux's high-water mark, reset on entry through ``/proc/self/clear_refs``; where that
    cannot be written, a 5 ms sampler of the resident set. GPU: PyTorch's allocator peak (torch
    backends and peers) and the device-wide used memory sampled every 5 ms (backends with their own
    allocators, such as ONNX Runtime or TensorRT, are seen only there).
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.result: MemoryPeak | None = None
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._host_samples: list[float] = []
        self._gpu_used_peak = 0
        self._use_hwm = False

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            if not self._use_hwm:
                rss = _rss_mib()
                if rss is not None:
                    self._host_samples.append(rss)
            if self.cuda:
                free, total = torch.cuda.mem_get_info()
                self._gpu_used_peak = max(self._gpu_used_peak, total - free)

    def __enter__(self) -> PeakMemory:
        self._host_base = _rss_mib()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._use_hwm = _proc_status_kib("VmHWM") is not None
        except OSError:
            self._use_hwm = False
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            free, total = torch.cuda.mem_get_info()
            self._gpu_base = total - free
            self._gpu_used_peak = self._gpu_base
            self._torch_base = torch.cuda.memory_allocated()
        if self.cuda or not self._use_hwm:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()
        if self._use_hwm:
            hwm = _proc_status_kib("VmHWM")
            peak = None if hwm is None else hwm / 1024.0
            method = "VmHWM after clear_refs"
        elif self._host_samples:
            peak, method = max(self._host_samples), "VmRSS sampled every 5 ms"
        else:
            peak, method = None, "unavailable on this platform"
        increase = None if peak is None or self._host_base is None else max(0.0, peak - self._host_base)
        if not self.cuda:
            self.result = MemoryPeak(peak, increase, method)
            return
        peak_alloc = torch.cuda.max_memory_allocated()
        self.result = MemoryPeak(
            host_peak_rss_mib=peak,
            host_peak_increase_mib=increase,
            host_method=method,
            gpu_torch_peak_allocated_mib=peak_alloc / 2**20,
            gpu_torch_peak_increase_mib=(peak_alloc - self._torch_base) / 2**20,
            gpu_device_used_peak_mib=self._gpu_used_peak / 2**20,
            gpu_device_used_increase_mib=(self._gpu_used_peak - self._gpu_base) / 2**20,
        )
