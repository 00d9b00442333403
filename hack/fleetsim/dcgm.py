"""A dcgm-exporter stand-in: one /metrics endpoint per simulated GPU node.

There are no GPUs here, so the simulator decides the values; this module only
speaks NVIDIA dcgm-exporter's exposition format, so that Prometheus queries
written for real nodes work unchanged (REFERENCE.md "Metric names"):

- metric names and HELP texts of dcgm-exporter's etc/default-counters.csv and
  dcp-metrics-included.csv: `DCGM_FI_DEV_GPU_UTIL` (percent, 0-100),
  `DCGM_FI_PROF_GR_ENGINE_ACTIVE` (ratio, 0-1), `DCGM_FI_DEV_FB_USED` and
  `DCGM_FI_DEV_FB_FREE` (MiB), `DCGM_FI_DEV_POWER_USAGE` (W),
  `DCGM_FI_DEV_XID_ERRORS` (value of the last XID error, 0 when none);
- labels in dcgm-exporter's order: `gpu`, `UUID`, `device` (nvidia<N>),
  `modelName`, then `GPU_I_PROFILE` and `GPU_I_ID` for a MIG instance,
  `Hostname`, and, as its Kubernetes pod mapping does for a device allocated
  to a pod, `container`, `namespace`, `pod`;
- MIG: `DCGM_FI_DEV_GPU_UTIL` is NOT reported for MIG instances; use
  `DCGM_FI_PROF_GR_ENGINE_ACTIVE` (REFERENCE.md). A MIG sample carries its
  parent GPU's index and UUID, as dcgm-exporter's do.

Not reproduced: `pci_bus_id` and `DCGM_FI_DRIVER_VERSION` (there is no PCI
bus or driver to report) and the other default counters (clocks,
temperatures, PCIe, NVLink), which gpufleet does not read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from aiohttp import web

A100_80GB = "NVIDIA A100-SXM4-80GB"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class GpuSample:
    """One device's readings at one instant: a whole GPU, or a MIG instance when `mig_profile` is set."""

    gpu: int
    uuid: str
    model_name: str = A100_80GB
    utilization: float = 0.0  # 0-1: graphics engine active ratio
    fb_used_mib: float = 0.0
    fb_free_mib: float = 81920.0
    power_w: float = 0.0
    mig_profile: str | None = None  # e.g. "3g.40gb"
    gpu_instance_id: int | None = None
    # The container the device is allocated to (the kubelet's pod-resources API), all three or none.
    namespace: str | None = None
    pod: str | None = None
    container: str | None = None
    xid_errors: int = 0  # value of the last XID error, 0 when none

    def __post_init__(self) -> None:
        if not 0.0 <= self.utilization <= 1.0:
            raise ValueError(f"GpuSample.utilization must be within 0-1, got {self.utilization}")
        if (self.mig_profile is None) != (self.gpu_instance_id is None):
            raise ValueError(
                "GpuSample: mig_profile and gpu_instance_id are set together (MIG) or not at all"
            )
        if len({self.namespace is None, self.pod is None, self.container is None}) != 1:
            raise ValueError(
                "GpuSample: namespace, pod and container are set together (allocated) or not at all"
            )
        if self.gpu < 0 or self.fb_used_mib < 0 or self.fb_free_mib < 0 or self.power_w < 0:
            raise ValueError(f"GpuSample fields must be >= 0: {self}")

    @property
    def is_mig(self) -> bool:
        return self.mig_profile is not None


@dataclass(frozen=True)
class _Field:
    name: str
    help: str
    value: Callable[[GpuSample], float | int]
    mig: bool = True  # reported for MIG instances


FIELDS = (
    # Help texts as in dcgm-exporter's etc/default-counters.csv and etc/dcp-metrics-included.csv.
    _Field(
        "DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", lambda s: round(100 * s.utilization), mig=False
    ),
    _Field("DCGM_FI_DEV_XID_ERRORS", "Value of the last XID error encountered.", lambda s: s.xid_errors),
    _Field("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", lambda s: round(s.fb_free_mib)),
    _Field("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", lambda s: round(s.fb_used_mib)),
    _Field("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", lambda s: s.power_w),
    _Field(
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "Ratio of time the graphics engine is active.",
        lambda s: s.utilization,
    ),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(sample: GpuSample, hostname: str) -> dict[str, str]:
    """The labels dcgm-exporter puts on every metric of this device, in its order."""
    result = {
        "gpu": str(sample.gpu),
        "UUID": sample.uuid,
        "device": f"nvidia{sample.gpu}",
        "modelName": sample.model_name,
    }
    if sample.mig_profile is not None:
        result["GPU_I_PROFILE"] = sample.mig_profile
        result["GPU_I_ID"] = str(sample.gpu_instance_id)
    result["Hostname"] = hostname
    if sample.namespace is not None and sample.pod is not None and sample.container is not None:
        result["container"] = sample.container
        result["namespace"] = sample.namespace
        result["pod"] = sample.pod
    return result


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _lines(samples: Sequence[GpuSample], hostname: str) -> Iterator[str]:
    label_text = [",".join(f'{k}="{_escape(v)}"' for k, v in labels(s, hostname).items()) for s in samples]
    for field in FIELDS:
        rows = [(s, text) for s, text in zip(samples, label_text, strict=True) if field.mig or not s.is_mig]
        if not rows:
            continue  # dcgm-exporter prints no HELP/TYPE for a field no device reports
        yield f"# HELP {field.name} {field.help}"
        yield f"# TYPE {field.name} gauge"
        for sample, text in rows:
            yield f"{field.name}{{{text}}} {_number(field.value(sample))}"


def render(samples: Sequence[GpuSample], hostname: str) -> str:
    """The /metrics body for these devices (Prometheus text format 0.0.4)."""
    return "".join(line + "\n" for line in _lines(samples, hostname))


class DcgmExporter:
    """GET /metrics on `host:port`, rendering `samples()` at each scrape (the values are always current)."""

    def __init__(
        self, host: str, port: int, hostname: str, samples: Callable[[], Sequence[GpuSample]]
    ) -> None:
        # ENVIRONMENT.md: only loopback addresses may be used on these machines.
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"DcgmExporter host must be a loopback address, got {host!r}")
        self.host = host
        self.port = port
        self.hostname = hostname
        self.samples = samples
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def _metrics(self, request: web.Request) -> web.Response:
        body = render(self.samples(), self.hostname)
        return web.Response(body=body.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError(f"dcgm exporter for {self.hostname} is already running on {self.url}")
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if self.port == 0:
            # Port 0 asks the kernel for a free port; report the one it gave.
            self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
