"""Per-cell prediction with trained runs: image-level (CAM) runs, cell-level (crop) runs, and
the out-of-fold tables of a training."""
