"""Peak dense FLOP/s (and, for TPUs, HBM size and bandwidth) of accelerators, by
`jax.Device.device_kind`, and model FLOPs utilisation.

Numbers are the vendors' dense (no 2:4 sparsity) peaks per chip. JAX exposes a TPU chip as one
device, except the dual-TensorCore chips without megacore (v2, v3, 7x), where each TensorCore is a
device; `peak_flops` divides accordingly (using `Device.num_cores` when the device reports it).

Precisions: "bfloat16" is the tensor-core / MXU rate (also float16); "float32" is true IEEE float32
arithmetic; "tensorfloat32" is NVIDIA's TF32 tensor-core rate (Ampere and later). At JAX's default
matmul precision, float32 matmuls run as TF32 on such GPUs and as bfloat16 passes on TPUs, so
training with float32 compute at default precision is measured against "tensorfloat32" (GPU) or
"bfloat16" (TPU). Google publishes no float32 rate for TPUs: lookups return None there.

HBM per chip (capacity in GiB as the TPU pages give it, bandwidth in bytes/s) and the chip's
bidirectional inter-chip interconnect (ICI) bandwidth are listed for the TPUs whose slices
tools/aot_compile.py sizes; the runtime keeps a little HBM for itself, so a program can use
slightly less than the capacity (the compiler knows how much: fourm_jax/train/aot.py asks it).

Sources:
  [tpu]   Google Cloud TPU documentation, system architecture pages for v2, v3, v4, v5e, v5p, v6e
          (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e) and the Ironwood (TPU7x) announcement
          (2025: 4,614 TFLOP/s FP8 per chip; bfloat16 half of that). HBM: v3 32 GiB at 900 GB/s,
          v4 32 GiB at 1,200 GB/s, v5e 16 GiB at 819 GB/s, v5p 95 GiB at 2,765 GB/s, v6e 32 GiB
          at 1,640 GB/s, TPU7x 192 GiB at 7.37 TB/s. Bidirectional ICI per chip: v5e 400 GB/s,
          v5p 1,200 GB/s, v6e 800 GB/s.
  [a100]  NVIDIA A100 Tensor Core GPU datasheet (2021): BF16 312, TF32 156, FP32 19.5 TFLOP/s.
  [h100]  NVIDIA H100 Tensor Core GPU datasheet (2023): SXM BF16 989, TF32 495, FP32 67; PCIe BF16
          756, TF32 378, FP32 51; NVL BF16 835, TF32 418, FP32 60 TFLOP/s (halved sparse figures).
  [h200]  NVIDIA H200 datasheet (2024): SXM as H100 SXM; NVL as H100 NVL.
  [gh200] NVIDIA GH200 Grace Hopper datasheet: GPU as H100 SXM.
  [b200]  NVIDIA HGX B200 datasheet (2025), per GPU: BF16 2,250, TF32 1,100, FP32 75 TFLOP/s.
  [l4]    NVIDIA L4 datasheet: BF16 121, TF32 60, FP32 30.3 TFLOP/s.
  [l40s]  NVIDIA L40S datasheet: BF16 362, TF32 183, FP32 91.6 TFLOP/s.
  [a10]   NVIDIA A10 datasheet: BF16 125, TF32 62.5, FP32 31.2 TFLOP/s.
  [v100]  NVIDIA V100 datasheet: no bfloat16; FP32 15.7 (SXM2) / 14 (PCIe) TFLOP/s.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

PRECISIONS = ("bfloat16", "float32", "tensorfloat32")
_T = 1e12
_GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator model: the device_kind strings JAX reports for it and its per-chip peaks."""

    name: str
    device_kinds: str  # regular expression, matched in full, case-insensitively
    bfloat16: float | None
    float32: float | None
    tensorfloat32: float | None = None
    cores_per_chip: int = 1  # TensorCores per TPU chip
    cores_per_device: int = 1  # TensorCores per JAX device by default (2 with megacore)
    hbm_bytes: float | None = None  # HBM capacity per chip
    hbm_bandwidth: float | None = None  # HBM bytes/s per chip
    ici_bandwidth: float | None = None  # inter-chip interconnect bytes/s per chip, both directions


CHIPS: tuple[Chip, ...] = (
    # Google TPUs [tpu]. device_kind strings as in jax/_src/pallas/mosaic/tpu_info.py.
    Chip("TPU v2", r"TPU v2", 45 * _T, None, cores_per_chip=2),
    Chip("TPU v3", r"TPU v3", 123 * _T, None, cores_per_chip=2, hbm_bytes=32 * _GIB, hbm_bandwidth=900e9),
    Chip("TPU v4", r"TPU v4", 275 * _T, None, cores_per_chip=2, cores_per_device=2, hbm_bytes=32 * _GIB,
         hbm_bandwidth=1200e9),
    Chip("TPU v4i", r"TPU v4 lite", 137 * _T, None),  # inference chip; JAX's tpu_info table
    Chip("TPU v5e", r"TPU v5(e| lite)", 197 * _T, None, hbm_bytes=16 * _GIB, hbm_bandwidth=819e9,
         ici_bandwidth=400e9),
    Chip("TPU v5p", r"TPU v5p?", 459 * _T, None, cores_per_chip=2, cores_per_device=2, hbm_bytes=95 * _GIB,
         hbm_bandwidth=2765e9, ici_bandwidth=1200e9),
    Chip("TPU v6e (Trillium)", r"TPU v6(e| lite)", 918 * _T, None, hbm_bytes=32 * _GIB, hbm_bandwidth=1640e9,
         ici_bandwidth=800e9),
    Chip("TPU7x (Ironwood)", r"TPU ?7x", 2307 * _T, None, cores_per_chip=2, hbm_bytes=192 * _GIB,
         hbm_bandwidth=7.37e12),
    # NVIDIA GPUs: device_kind is the CUDA device name, e.g. "NVIDIA H100 80GB HBM3".
    Chip("NVIDIA A100", r"NVIDIA A100.*", 312 * _T, 19.5 * _T, 156 * _T),  # [a100] SXM and PCIe
    Chip("NVIDIA H100 PCIe", r"NVIDIA H100.*PCIe.*", 756 * _T, 51.2 * _T, 378 * _T),  # [h100]
    Chip("NVIDIA H100 NVL", r"NVIDIA H100 NVL.*", 835 * _T, 60 * _T, 418 * _T),  # [h100]
    Chip("NVIDIA H100 SXM", r"NVIDIA H100.*", 989 * _T, 67 * _T, 495 * _T),  # [h100] "H100 80GB HBM3"
    Chip("NVIDIA H200 NVL", r"NVIDIA H200 NVL.*", 835 * _T, 60 * _T, 418 * _T),  # [h200]
    Chip("NVIDIA H200 SXM", r"NVIDIA H200.*", 989 * _T, 67 * _T, 495 * _T),  # [h200]
    Chip("NVIDIA GH200", r"NVIDIA GH200.*", 989 * _T, 67 * _T, 495 * _T),  # [gh200]
    Chip("NVIDIA B200", r"NVIDIA B200.*", 2250 * _T, 75 * _T, 1100 * _T),  # [b200]
    Chip("NVIDIA L40S", r"NVIDIA L40S.*", 362 * _T, 91.6 * _T, 183 * _T),  # [l40s]
    Chip("NVIDIA L4", r"NVIDIA L4", 121 * _T, 30.3 * _T, 60 * _T),  # [l4]
    Chip("NVIDIA A10", r"NVIDIA A10", 125 * _T, 31.2 * _T, 62.5 * _T),  # [a10]; not the A10G
    Chip("NVIDIA V100 SXM2", r"Tesla V100-SXM2.*", None, 15.7 * _T),  # [v100]
    Chip("NVIDIA V100 PCIe", r"Tesla V100-PCIE.*", None, 14 * _T),  # [v100]
)


def chip(device_kind: str) -> Chip | None:
    """The table entry for a `jax.Device.device_kind` string, or None when it is not in the table."""
    for entry in CHIPS:  # more specific patterns come first
        if re.fullmatch(entry.device_kinds, device_kind.strip(), flags=re.IGNORECASE):
            return entry
    return None


def peak_flops(device_kind: str, dtype: str = "bfloat16", num_cores: int | None = None) -> float | None:
    """Peak dense FLOP/s of one JAX device, or None when unknown (unlisted chip or precision).

    num_cores: TensorCores behind the device, as `jax.Device.num_cores` reports on TPU; None
    assumes the chip's default (one device per chip, or per TensorCore on v2, v3 and 7x).
    """
    if dtype not in PRECISIONS:
        raise ValueError(f"dtype must be one of {PRECISIONS}, got {dtype!r}")
    return _chip_value(dtype, device_kind, num_cores)


def _chip_value(field: str, device_kind: str, num_cores: int | None) -> float | None:
    """A per-chip table value scaled to one JAX device (its share of the chip's TensorCores)."""
    entry = chip(device_kind)
    if entry is None or getattr(entry, field) is None:
        return None
    cores = entry.cores_per_device if num_cores is None else num_cores
    return getattr(entry, field) * cores / entry.cores_per_chip


def hbm_bytes(device_kind: str, num_cores: int | None = None) -> float | None:
    """HBM capacity of one JAX device in bytes, or None when the table has none (num_cores: as
    in `peak_flops`)."""
    return _chip_value("hbm_bytes", device_kind, num_cores)


def hbm_bandwidth(device_kind: str, num_cores: int | None = None) -> float | None:
    """HBM bandwidth of one JAX device in bytes/s, or None when the table has none."""
    return _chip_value("hbm_bandwidth", device_kind, num_cores)


def ici_bandwidth(device_kind: str, num_cores: int | None = None) -> float | None:
    """Inter-chip interconnect bandwidth of one JAX device (both directions, bytes/s), or None."""
    return _chip_value("ici_bandwidth", device_kind, num_cores)


def mfu(flops_per_step: float, step_time_s: float, devices: Sequence[Any],
        dtype: str = "bfloat16") -> float | None:
    """Model FLOPs utilisation: flops_per_step / step_time_s / (sum of the devices' peaks).

    flops_per_step counts the whole global step (e.g. `flops.train_flops_per_step(...).total`);
    devices are the `jax.Device`s that ran it. None on CPU, or when a device's peak is unknown.
    """
    if not step_time_s > 0:
        raise ValueError(f"step_time_s must be positive, got {step_time_s!r}")
    if not devices:
        raise ValueError("mfu needs at least one device")
    total_peak = 0.0
    for device in devices:
        if device.platform == "cpu":
            return None
        num_cores = getattr(device, "num_cores", None) if device.platform == "tpu" else None
        peak = peak_flops(device.device_kind, dtype, num_cores)
        if peak is None:
            return None
        total_peak += peak
    return flops_per_step / step_time_s / total_peak
