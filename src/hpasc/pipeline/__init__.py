"""Whole runs: recipes (task graph, step kinds) and end-to-end prediction of new fields."""
