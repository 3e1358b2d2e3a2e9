import numpy as np
import pytest
from safetensors.numpy import load_file

from fourm_jax.convert.safetensors_io import TensorSource, write_safetensors


def test_written_file_loads_with_the_safetensors_library(tmp_path):
    tensors = {"b.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones((5,), np.float32),
               "empty": np.zeros((0, 4), np.float32)}
    produced = []

    def entry(key):
        def produce():
            produced.append(key)
            return tensors[key]
        return key, tensors[key].shape, tensors[key].dtype, produce

    write_safetensors(tmp_path / "x.safetensors", [entry(k) for k in tensors], {"dim": "64"})
    assert produced == list(tensors)  # one at a time, in order
    loaded = load_file(tmp_path / "x.safetensors")
    for key, value in tensors.items():
        np.testing.assert_array_equal(loaded[key], value)
    source = TensorSource(tmp_path / "x.safetensors")
    assert source.metadata() == {"dim": "64"}
    assert source.shape("b.weight") == (2, 3) and source.dtype("a") == "F32"


def test_declared_shape_is_enforced(tmp_path):
    with pytest.raises(ValueError, match="'w' has shape \\(3,\\), declared \\(4,\\)"):
        write_safetensors(tmp_path / "x.safetensors", [("w", (4,), np.float32, lambda: np.zeros(3))])
