"""Datasets, folds, transforms."""
