import types

import jax
import pytest

from fourm_jax.scaling import hardware

T = 1e12


# device_kind strings as JAX reports them (TPU: jax/_src/pallas/mosaic/tpu_info.py; GPU: the CUDA
# device name), with the vendors' dense peaks per JAX device (see the sources in hardware.py).
@pytest.mark.parametrize("kind, dtype, expected", [
    ("TPU v4", "bfloat16", 275 * T),
    ("TPU v5 lite", "bfloat16", 197 * T),
    ("TPU v5e", "bfloat16", 197 * T),
    ("TPU v5", "bfloat16", 459 * T),
    ("TPU v5p", "bfloat16", 459 * T),
    ("TPU v6 lite", "bfloat16", 918 * T),
    ("TPU v3", "bfloat16", 123 * T / 2),  # one JAX device per TensorCore, two per chip
    ("TPU7x", "bfloat16", 2307 * T / 2),
    ("TPU v5 lite", "float32", None),  # Google publishes no float32 rate
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312 * T),
    ("NVIDIA A100-PCIE-40GB", "tensorfloat32", 156 * T),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989 * T),
    ("NVIDIA H100 80GB HBM3", "float32", 67 * T),
    ("NVIDIA H100 PCIe", "bfloat16", 756 * T),
    ("NVIDIA H100 NVL", "bfloat16", 835 * T),
    ("NVIDIA H200", "bfloat16", 989 * T),
    ("NVIDIA GH200 480GB", "bfloat16", 989 * T),
    ("NVIDIA B200", "bfloat16", 2250 * T),
    ("NVIDIA L4", "bfloat16", 121 * T),
    ("NVIDIA L40S", "bfloat16", 362 * T),
    ("Tesla V100-SXM2-16GB", "bfloat16", None),  # no bfloat16 on Volta
    ("Tesla V100-SXM2-16GB", "float32", 15.7 * T),
    ("NVIDIA A10G", "bfloat16", None),  # not in the table
    ("cpu", "bfloat16", None),
])
def test_peak_flops(kind, dtype, expected):
    assert hardware.peak_flops(kind, dtype) == (None if expected is None else pytest.approx(expected))


def test_tpu_split_mode_halves_the_chip():
    assert hardware.peak_flops("TPU v4", num_cores=1) == pytest.approx(275 * T / 2)


def test_unknown_precision_is_an_error():
    with pytest.raises(ValueError, match="dtype must be one of"):
        hardware.peak_flops("TPU v4", "int8")


def test_mfu_is_none_on_cpu():
    assert hardware.mfu(1e12, 1.0, jax.devices()) is None


def _device(kind, platform="tpu", **extra):
    return types.SimpleNamespace(device_kind=kind, platform=platform, **extra)


def test_mfu_of_a_v5e_slice_and_an_h100():
    devices = [_device("TPU v5 lite", num_cores=1)] * 4
    assert hardware.mfu(0.4 * 4 * 197 * T * 2.0, 2.0, devices) == pytest.approx(0.4)
    assert hardware.mfu(494.5 * T, 1.0, [_device("NVIDIA H100 80GB HBM3", "gpu")]) == pytest.approx(0.5)
    assert hardware.mfu(1e12, 1.0, [_device("NVIDIA A10G", "gpu")]) is None


def test_mfu_rejects_bad_arguments():
    with pytest.raises(ValueError, match="step_time_s"):
        hardware.mfu(1e12, 0.0, [_device("TPU v4")])
    with pytest.raises(ValueError, match="at least one device"):
        hardware.mfu(1e12, 1.0, [])


GIB = 2**30


@pytest.mark.parametrize("kind, num_cores, capacity, bandwidth", [
    ("TPU v5 lite", None, 16 * GIB, 819e9),
    ("TPU v5", 2, 95 * GIB, 2765e9),  # megacore: one device is the whole chip
    ("TPU v5", 1, 95 * GIB / 2, 2765e9 / 2),  # split mode: one TensorCore
    ("TPU v6 lite", None, 32 * GIB, 1640e9),
    ("TPU v4", None, 32 * GIB, 1200e9),
    ("TPU v3", None, 16 * GIB, 450e9),  # one device per TensorCore
    ("NVIDIA H100 80GB HBM3", None, None, None),  # GPUs: not in the table
    ("cpu", None, None, None),
])
def test_hbm_per_device(kind, num_cores, capacity, bandwidth):
    assert hardware.hbm_bytes(kind, num_cores) == (None if capacity is None else pytest.approx(capacity))
    expected_bandwidth = None if bandwidth is None else pytest.approx(bandwidth)
    assert hardware.hbm_bandwidth(kind, num_cores) == expected_bandwidth


def test_ici_bandwidth_per_device():
    assert hardware.ici_bandwidth("TPU v5 lite") == pytest.approx(400e9)
    assert hardware.ici_bandwidth("TPU v5", num_cores=2) == pytest.approx(1200e9)
    assert hardware.ici_bandwidth("TPU v6 lite") == pytest.approx(800e9)
    assert hardware.ici_bandwidth("TPU v4") is None
