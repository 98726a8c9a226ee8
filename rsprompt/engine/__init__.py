"""Engine: Lightning task, losses, metrics, optimisers and adapter-only checkpoints."""
