"""Batch augmentations shared by the image-level and cell-level models.

* CutMix (box sampler, mixing, and the exact inverse used to re-align class activation maps),
* the dihedral group D4 (8 transforms and their inverses, for training and TTA),
* drop-cell (erase random cells of a field),
* a random affine transform of a batch (image bilinear, mask nearest),
* the ER/MT green-channel synthesis of a training field (``p_er`` / ``p_mt``).

Every random draw comes from a generator passed in by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

# ----------------------------------------------------------------------------------- CutMix


@dataclass(frozen=True)
class CutMixBox:
    """One CutMix draw: the box ``[y0:y1, x0:x1]`` of sample ``i`` comes from sample ``perm[i]``.

    ``lam`` is the fraction of each image that stays its own: ``1 - box area / (H·W)``,
    recomputed from the clipped box (the λ drawn from Beta is only used to size the box).
    """

    y0: int
    y1: int
    x0: int
    x1: int
    perm: tuple[int, ...]
    height: int
    width: int

    @property
    def lam(self) -> float:
        return 1.0 - (self.y1 - self.y0) * (self.x1 - self.x0) / float(self.height * self.width)

    def inverse_perm(self) -> list[int]:
        inv = [0] * len(self.perm)
        for i, p in enumerate(self.perm):
            inv[p] = i
        return inv

    def scaled(self, height: int, width: int) -> CutMixBox:
        """The same box on a grid of another size (e.g. a CAM up-sampled to a different size)."""
        sy, sx = height / self.height, width / self.width
        return CutMixBox(
            round(self.y0 * sy), round(self.y1 * sy), round(self.x0 * sx), round(self.x1 * sx),
            self.perm, height, width,
        )  # fmt: skip


def sample_cutmix_box(
    batch_size: int, height: int, width: int, rng: np.random.Generator, alpha: float = 1.0
) -> CutMixBox:
    """Draw λ ~ Beta(α, α), a box of side ratio √(1−λ) with a uniform centre (clipped to the image),
    and a random permutation of the batch."""
    lam = rng.beta(alpha, alpha)
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    perm = tuple(int(p) for p in rng.permutation(batch_size))
    return CutMixBox(int(y0), int(y1), int(x0), int(x1), perm, height, width)


def sample_cutmix_boxes(
    batch_size: int, height: int, width: int, rng: np.random.Generator, repeat: int = 1
) -> list[CutMixBox]:
    """``repeat`` boxes; as in the reference the permutation is rotated by one between repeats."""
    boxes = [sample_cutmix_box(batch_size, height, width, rng)]
    for _ in range(repeat - 1):
        nxt = sample_cutmix_box(batch_size, height, width, rng)
        rolled = boxes[-1].perm[1:] + boxes[-1].perm[:1]
        boxes.append(CutMixBox(nxt.y0, nxt.y1, nxt.x0, nxt.x1, rolled, height, width))
    return boxes


def _check_grid(x: torch.Tensor, box: CutMixBox) -> CutMixBox:
    h, w = x.shape[-2:]
    if (h, w) != (box.height, box.width):
        box = box.scaled(h, w)
    if x.shape[0] != len(box.perm):
        raise ValueError(
            f"batch of {x.shape[0]} does not match a CutMix permutation of {len(box.perm)}"
        )
    return box


def cutmix(x: torch.Tensor, boxes: list[CutMixBox]) -> torch.Tensor:
    """Apply the boxes in order: ``out[i, ..., box] = out[perm[i], ..., box]``. Returns a new tensor."""
    out = x.clone()
    for box in boxes:
        box = _check_grid(out, box)
        perm = torch.as_tensor(box.perm, device=out.device)
        ys, xs = slice(box.y0, box.y1), slice(box.x0, box.x1)
        out[..., ys, xs] = out[perm, ..., ys, xs]  # gathers the box only, not whole maps
    return out


def inverse_cutmix(x: torch.Tensor, boxes: list[CutMixBox]) -> torch.Tensor:
    """Undo :func:`cutmix` (boxes in reverse order): every map is re-aligned with its own image.

    Works on any per-pixel output of the mixed batch, e.g. a CAM up-sampled to the input size
    (boxes are rescaled when the grid differs; exact when it is the input grid).
    """
    out = x.clone()
    for box in reversed(boxes):
        box = _check_grid(out, box)
        inv = torch.as_tensor(box.inverse_perm(), device=out.device)
        ys, xs = slice(box.y0, box.y1), slice(box.x0, box.x1)
        out[..., ys, xs] = out[inv, ..., ys, xs]
    return out


# ------------------------------------------------------------------------------------- D4

D4_SIZE = 8


def d4_transform(x: torch.Tensor | np.ndarray, k: int, dims: tuple[int, int] = (-2, -1)):
    """Element ``k`` (0..7) of D4 on the two spatial ``dims``: ``k % 4`` quarter turns, then a
    flip of the last spatial axis when ``k >= 4``. ``k = 0`` is the identity."""
    if not 0 <= k < D4_SIZE:
        raise ValueError(f"D4 element must be in 0..7, got {k}")
    if isinstance(x, np.ndarray):
        y = np.rot90(x, k % 4, axes=dims)
        return np.flip(y, axis=dims[1]) if k >= 4 else y
    y = torch.rot90(x, k % 4, dims=dims)
    return torch.flip(y, dims=(dims[1],)) if k >= 4 else y


def d4_inverse(x: torch.Tensor | np.ndarray, k: int, dims: tuple[int, int] = (-2, -1)):
    """Inverse of :func:`d4_transform` (``d4_inverse(d4_transform(x, k), k) == x``)."""
    if not 0 <= k < D4_SIZE:
        raise ValueError(f"D4 element must be in 0..7, got {k}")
    if isinstance(x, np.ndarray):
        y = np.flip(x, axis=dims[1]) if k >= 4 else x
        return np.rot90(y, -(k % 4), axes=dims)
    y = torch.flip(x, dims=(dims[1],)) if k >= 4 else x
    return torch.rot90(y, -(k % 4), dims=dims)


# ------------------------------------------------------------------------------- drop-cell


def drop_cells(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, fill: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Erase a random subset of the cells present in ``mask`` (H×W ids) from ``image`` (H×W×C).

    With n ≥ 2 cells present, k ~ U{1..n−1} of them are chosen; their union is dilated by one
    pixel (3×3) and set to ``fill`` in the image and to 0 in the mask. Unlike the reference,
    candidates are only the cells actually present (after cropping), never absent ids.
    Returns new arrays.
    """
    present = np.flatnonzero(np.bincount(mask.ravel()))
    present = present[present > 0]
    if len(present) < 2:
        return image, mask
    k = int(rng.integers(1, len(present)))
    chosen = rng.choice(present, size=k, replace=False)
    drop = np.isin(mask, chosen).astype(np.uint8)
    drop = cv2.dilate(drop, np.ones((3, 3), np.uint8), iterations=1).astype(bool)
    image = image.copy()
    image[drop] = fill
    mask = mask.copy()
    mask[drop] = 0
    return image, mask


# --------------------------------------------------------------------------------- affine


@dataclass(frozen=True)
class AffineParams:
    angle: float
    shear: tuple[float, float]
    scale: float

    @property
    def is_identity(self) -> bool:
        return self.angle == 0 and self.shear == (0.0, 0.0) and self.scale == 1.0


def sample_affine(
    rng: np.random.Generator, angle_limit: float, shear_limit: float, scale_limit: float
) -> AffineParams:
    """Angle ~ U(−a, a), shears ~ U(−s, s) per axis, scale = 1 + U(−l, l).

    The reference drew the angle from U(0, a) (rotations in one direction only); a rotation
    augmentation has no preferred direction, so it is symmetric here.
    """
    angle = float(rng.uniform(-angle_limit, angle_limit)) if angle_limit > 0 else 0.0
    sx, sy = rng.uniform(-shear_limit, shear_limit, size=2) if shear_limit > 0 else (0.0, 0.0)
    scale = 1.0 + float(rng.uniform(-scale_limit, scale_limit)) if scale_limit > 0 else 1.0
    return AffineParams(angle, (float(sx), float(sy)), scale)


def affine(x: torch.Tensor, params: AffineParams, nearest: bool = False) -> torch.Tensor:
    """Apply ``params`` to a batch (…×H×W) about the centre, no translation, zero fill.

    ``nearest=True`` for masks (integer ids survive exactly); bilinear otherwise.
    """
    if params.is_identity:
        return x
    mode = InterpolationMode.NEAREST if nearest else InterpolationMode.BILINEAR
    kwargs = dict(
        angle=params.angle,
        translate=[0.0, 0.0],
        scale=params.scale,
        shear=list(params.shear),
        interpolation=mode,
    )
    if x.dtype.is_floating_point:
        return tvf.affine(x, **kwargs)
    # integer masks: ids are exact in float32 up to 2**24
    return tvf.affine(x.float(), **kwargs).round().to(x.dtype)


# ----------------------------------------------------------------------- ER/MT green synthesis

#: classes a synthesised green channel shows: a copy of yellow (ER), of red (microtubules)
ER_CLASS, MT_CLASS = 6, 10


@dataclass(frozen=True)
class GreenSynthesis:
    """The original's ``p_er`` / ``p_mt`` augmentation of a training field (off by default).

    With probability ``p_er`` the protein (green) channel is replaced by a shifted, noisy copy
    of the ER (yellow) channel and the image label becomes "Endoplasmic reticulum" only; else,
    with probability ``p_mt``, by a copy of the microtubule (red) channel, label
    "Microtubules" only. Copy: shifted by a random integer in [−max_shift, max_shift] per axis
    (zero fill), plus Gaussian noise of std ``noise_std`` grey levels.
    """

    p_er: float = 0.0
    p_mt: float = 0.0
    noise_std: float = 25.0
    max_shift: int = 20

    @property
    def enabled(self) -> bool:
        return self.p_er > 0 or self.p_mt > 0


def synthesize_green(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, cfg: GreenSynthesis
) -> tuple[np.ndarray, np.ndarray]:
    """``(image, label)`` with the green channel synthesised as in :class:`GreenSynthesis`, or
    unchanged. ``image`` H×W×4 uint8 (R, G, B, Y); the result is rounded back to uint8."""
    if rng.random() < cfg.p_er:
        source, cls = 3, ER_CLASS
    elif rng.random() < cfg.p_mt:
        source, cls = 0, MT_CLASS
    else:
        return image, label
    h, w = image.shape[:2]
    dy, dx = (int(v) for v in rng.integers(-cfg.max_shift, cfg.max_shift + 1, size=2))
    shifted = np.zeros((h, w), np.float32)
    src = image[..., source].astype(np.float32)
    shifted[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = src[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    green = shifted + rng.normal(0.0, cfg.noise_std, size=(h, w)).astype(np.float32)
    out = image.copy()
    out[..., 1] = np.clip(np.rint(green), 0, 255).astype(np.uint8)
    new_label = np.zeros_like(label)
    new_label[cls] = 1
    return out, new_label
