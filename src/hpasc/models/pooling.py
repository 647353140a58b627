"""Cell-wise pooling of class activation maps inside instance masks.

A per-pixel class map (B×C×H×W) and an instance mask (B×H×W, 0 = background, 1..N = cells) give,
for every image, class and cell, the mean value over the cell's pixels. The reduction is one
``scatter_add_`` whose index is the mask broadcast over classes as a *view* (stride 0), so no
B×C×H×W integer tensor is ever built and the number of cells is unbounded (the reference capped
it at 255 and built a B·19·H·W int64 index).
"""

from __future__ import annotations

import torch

EPS = 1e-6


def cell_sum_pool(
    values: torch.Tensor, mask: torch.Tensor, num_cells: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell sums and pixel counts.

    Parameters
    ----------
    values : (B, C, H, W) float tensor.
    mask : (B, H, W) integer tensor of cell ids (0 = background).
    num_cells : number of cell columns K; ids ``1..K`` map to columns ``0..K-1``. Defaults to the
        largest id in ``mask``. Ids above K raise ``ValueError``.

    Returns
    -------
    sums : (B, C, K) tensor in the dtype of ``values`` (float32 for half inputs).
    counts : (B, K) float tensor: pixels per cell (0 for ids absent from an image).
    """
    if values.ndim != 4 or mask.ndim != 3:
        raise ValueError(
            f"expected values B×C×H×W and mask B×H×W, got {tuple(values.shape)} and {tuple(mask.shape)}"
        )
    b, c, h, w = values.shape
    if tuple(mask.shape) != (b, h, w):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match values {tuple(values.shape)}"
        )
    if mask.dtype.is_floating_point or mask.dtype == torch.bool:
        raise ValueError(f"mask must be an integer tensor, got {mask.dtype}")
    top = int(mask.max()) if mask.numel() else 0
    if num_cells is None:
        num_cells = top
    elif top > num_cells:
        raise ValueError(f"mask holds cell id {top} but num_cells={num_cells}")
    if mask.numel() and int(mask.min()) < 0:
        raise ValueError(f"mask holds a negative id {int(mask.min())}")
    if values.dtype in (torch.float16, torch.bfloat16):
        values = values.float()  # sums over thousands of pixels need float32 accuracy
    index = mask.reshape(b, 1, h * w).long()
    sums = values.new_zeros(b, c, num_cells + 1)
    sums.scatter_add_(2, index.expand(b, c, h * w), values.reshape(b, c, h * w))
    counts = values.new_zeros(b, num_cells + 1)
    counts.scatter_add_(1, index[:, 0], values.new_ones(1).expand(b, h * w))
    return sums[:, :, 1:], counts[:, 1:]


def cell_mean_pool(
    values: torch.Tensor, mask: torch.Tensor, num_cells: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` inside every cell of ``mask``.

    Same arguments as :func:`cell_sum_pool`. Returns ``means`` (B, C, K) and ``counts`` (B, K);
    a cell absent from an image has count 0 and mean 0.

    Examples
    --------
    >>> cam = torch.randn(2, 19, 64, 64)
    >>> mask = torch.randint(0, 300, (2, 64, 64))
    >>> means, counts = cell_mean_pool(cam, mask)   # (2, 19, 299), (2, 299)
    """
    sums, counts = cell_sum_pool(values, mask, num_cells)
    return sums / (counts[:, None, :] + EPS), counts
