"""sinusoidal_positions against the paper's formula written in numpy."""

import numpy as np
import pytest

from flaxzoo.layers import sinusoidal_positions


def numpy_sinusoid(positions, dim):
    pe = np.zeros((len(positions), dim))
    for row, p in enumerate(positions):
        for i in range(0, dim, 2):
            pe[row, i] = np.sin(p / 10000 ** (i / dim))
            pe[row, i + 1] = np.cos(p / 10000 ** (i / dim))
    return pe


def test_interleaved_matches_paper_formula_including_extrapolation():
    positions = np.array([0, 1, 5, 77, 5000])  # far beyond any training length
    np.testing.assert_allclose(sinusoidal_positions(positions, 16), numpy_sinusoid(positions, 16),
                               atol=2e-4)


def test_halves_layout_is_a_permutation_of_interleaved():
    pos = np.arange(10)
    inter = np.asarray(sinusoidal_positions(pos, 8))
    halves = np.asarray(sinusoidal_positions(pos, 8, layout="halves"))
    np.testing.assert_allclose(halves[:, :4], inter[:, 0::2])
    np.testing.assert_allclose(halves[:, 4:], inter[:, 1::2])


def test_any_position_shape():
    assert sinusoidal_positions(np.zeros((2, 3), int), 6).shape == (2, 3, 6)


@pytest.mark.parametrize("dim, layout, match", [(7, "interleaved", "even"), (0, "interleaved", "even"),
                                                (8, "zigzag", "layout")])
def test_errors(dim, layout, match):
    with pytest.raises(ValueError, match=match):
        sinusoidal_positions(np.arange(3), dim, layout=layout)
