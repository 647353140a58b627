"""Training: Lightning modules, the shared Trainer factory, optimisers and schedules."""
