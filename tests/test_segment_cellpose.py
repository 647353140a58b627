"""The Cellpose segmenter: a clear error without the package, the interface with it."""

import sys
import types

import numpy as np
import pytest

from hpasc.errors import InputError
from hpasc.segment import get_segmenter


def test_missing_cellpose_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cellpose", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "cellpose.models", None)
    with pytest.raises(InputError, match=r"pip install 'hpasc\[cellpose\]'"):
        get_segmenter("cellpose")


class _FakeModel:
    """Stands for cellpose.models.CellposeModel: cells = bright cytoplasm components."""

    calls: list = []

    def __init__(self, gpu, model_type):
        self.gpu, self.model_type = gpu, model_type

    def eval(self, x, diameter=None, channels=None):
        from scipy import ndimage as ndi

        type(self).calls.append((x.shape, x.dtype, diameter, channels))
        labels, _ = ndi.label(x[..., 0] > 0.5)
        return labels * 7, None, None  # labels need not be consecutive


def test_cellpose_output_maps_to_the_interface(monkeypatch):
    package = types.ModuleType("cellpose")
    models = types.ModuleType("cellpose.models")
    models.CellposeModel = _FakeModel
    package.models = models
    monkeypatch.setitem(sys.modules, "cellpose", package)
    monkeypatch.setitem(sys.modules, "cellpose.models", models)
    image = np.zeros((400, 600, 4), np.uint8)
    image[40:200, 40:200, 0] = 200  # cell 1
    image[80:160, 80:160, 2] = 220  # its nucleus
    image[240:380, 300:560, 3] = 180  # cell 2, ER only, no nucleus
    segmenter = get_segmenter("cellpose", diameter=400.0, working_size=150, gpu=False)
    result = segmenter.segment(image)
    shape, dtype, diameter, channels = _FakeModel.calls[-1]
    assert shape == (100, 150, 3) and dtype == np.float32  # a quarter of the side
    assert diameter == pytest.approx(400.0 * 150 / 2048) and channels == [1, 2]
    assert result.cells.shape == (400, 600) and result.cells.dtype == np.uint16
    assert sorted(np.unique(result.cells)) == [0, 1, 2]
    assert set(np.unique(result.nuclei[result.nuclei > 0])) == {result.cells[120, 120]}
