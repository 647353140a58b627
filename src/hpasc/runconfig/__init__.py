"""Run configs: the typed, validated configs of image-level and cell-level trainings.

Below both ``hpasc.train`` and ``hpasc.predict``: predicting with a fold needs only its config.
"""
