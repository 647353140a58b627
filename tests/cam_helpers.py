"""Shared helpers of the image-level tests (synthetic data, the tiny config)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "image-level" / "tiny.yaml"


def synth_data(path: Path, n_images: int = 12, size: int = 160, seed: int = 3) -> Path:
    from hpasc.synth import synthesize

    synthesize(path, n_images=n_images, size=size, seed=seed, progress=False)
    return path


def tiny_config(data: Path, *overrides: str):
    from hpasc.runconfig.image_level import load_image_level_config

    return load_image_level_config(TINY, [f"data.root={data}", *overrides])
