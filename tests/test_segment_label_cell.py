"""HPA label_cell with scaled constants, its upstream quirks, and > 255 cells."""

import numpy as np
import pytest

from hpasc.segment.label_cell import LabelCellConstants, label_cell


def _rectangle_cell(height: int, width: int, size: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Maps of one rectangular cell (body 255, border 20 over it) holding a 700-px nucleus."""
    nuclei = np.zeros((size, size, 3), np.uint8)
    cell = np.zeros_like(nuclei)
    y0 = x0 = 20
    cell[y0 : y0 + height, x0 : x0 + width, 2] = 255
    cell[y0 : y0 + height, x0 : x0 + width, 1] = 20
    nh = min(height - 2, 30)
    nw = -(-700 // nh)
    nuclei[y0 + 1 : y0 + 1 + nh, x0 + 2 : x0 + 2 + nw, 2] = 255
    return nuclei, cell


def test_constants_scale_with_resolution():
    assert LabelCellConstants.scaled(1.0) == LabelCellConstants()
    half = LabelCellConstants.scaled(0.5)
    assert (half.seed_min_area, half.nucleus_hole_area, half.foreground_min_area) == (125, 250, 2)
    assert (half.nucleus_min_area, half.cell_min_area, half.closing_radius) == (625, 1375, 3)
    with pytest.raises(ValueError):
        LabelCellConstants.scaled(0)


@pytest.mark.parametrize(("height", "width", "kept"), [(27, 57, True), (8, 231, False)])
def test_cell_of_1375_px_kept_and_1374_removed_at_half_scale(height, width, kept):
    # The hole filling trims a 1-px rim from the rectangle: (h-2)(w-2) px reach the final size
    # filter, 25*55 = 1375 and 6*229 = 1374.
    nuclei, cell = _rectangle_cell(height, width)
    nuc_labels, cells = label_cell(nuclei, cell, scale=0.5)
    assert cells.dtype == np.uint16
    if kept:
        assert cells.max() == 1 and np.count_nonzero(cells) == 1375
        assert nuc_labels.max() == 1 and np.all(cells[nuc_labels > 0] == 1)
    else:
        assert cells.max() == 0
    # At full scale the same objects are far below the 5,500-px minimum.
    assert label_cell(nuclei, cell, scale=1.0)[1].max() == 0


def _grid(n_rows: int, n_cols: int, side: int = 14, gap: int = 4):
    pitch = side + gap
    nuclei = np.zeros((n_rows * pitch + gap, n_cols * pitch + gap, 3), np.uint8)
    cell = np.zeros_like(nuclei)
    for r in range(n_rows):
        for c in range(n_cols):
            y, x = gap + r * pitch, gap + c * pitch
            cell[y : y + side, x : x + side, 2] = 255
            nuclei[y + 3 : y + side - 3, x + 3 : x + side - 3, 2] = 255
    return nuclei, cell


def test_more_than_255_cells_keep_their_own_labels():
    nuclei, cell = _grid(15, 20)  # 300 cells
    nuc_labels, cells = label_cell(nuclei, cell, scale=0.1)
    assert cells.dtype == np.uint16
    assert cells.max() == 300 and len(np.unique(cells)) == 301
    assert len(np.unique(nuc_labels)) == 301
    # The upstream uint8 cast loses cell 256 (it wraps to background).
    _, wrapped = label_cell(nuclei, cell, scale=0.1, uint8_labels=True)
    assert wrapped.max() == 299


def test_border_sum_wraps_in_uint8_like_upstream():
    nuclei, cell = _rectangle_cell(60, 80)
    nuclei[..., 1][nuclei[..., 2] > 0] = 200
    cell[..., 1] = np.where(nuclei[..., 2] > 0, 100, cell[..., 1])  # 200 + 100 = 300 -> 44
    assert label_cell(nuclei, cell, scale=0.5)[1].max() == 1  # wrapped: "not border", a seed
    assert label_cell(nuclei, cell, scale=0.5, wrap_border_sum=False)[1].max() == 0


def test_cell_border_exclusion_is_a_no_op_unless_asked():
    nuclei, cell = _rectangle_cell(60, 80)  # border channel 20 (> 0.05) over the whole cell
    assert label_cell(nuclei, cell, scale=0.5)[1].max() == 1
    assert label_cell(nuclei, cell, scale=0.5, exclude_cell_border=True)[1].max() == 0


def test_rejects_bad_maps():
    with pytest.raises(ValueError, match="uint8"):
        label_cell(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="differ"):
        label_cell(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8))
