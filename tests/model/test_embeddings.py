import numpy as np
import pytest

from fourm_jax.model.embeddings import sincos_1d, sincos_2d
from tests.model.parity_fixtures import fixture_dirs


@pytest.mark.parametrize("fixture", fixture_dirs(), ids=lambda p: p.name)
def test_sincos_tables_match_ml4m_buffers(fixture):
    """Every sin-cos position table the fixture stores, rebuilt by formula (1-D: 512 rows; 2-D: a grid).

    Float32 sines of arguments up to 511 differ between torch and numpy by a few ulps of the argument
    (~3e-5); checkpoints carry the tables themselves, so the formula only matters for new models."""
    buffers = np.load(fixture / "buffers.npz")
    checked = 0
    for key in (k for k in buffers.files if k.endswith("pos_emb")):
        table = buffers[key][0]
        rows, dim = table.shape
        side = int(round(rows**0.5))
        expected = sincos_2d(side, side, dim) if side * side == rows and rows != 512 else sincos_1d(rows, dim)
        np.testing.assert_allclose(expected, table, atol=5e-5, err_msg=key)
        checked += 1
    assert checked


def test_2d_table_encodes_row_then_column():
    table = sincos_2d(3, 3, 8)
    # token (row 1, column 2): first half sin/cos of the row index, second half of the column index
    expected = [np.sin(1), np.cos(1), np.sin(2), np.cos(2)]
    np.testing.assert_allclose(table[1 * 3 + 2, [0, 2, 4, 6]], expected, rtol=1e-6)
