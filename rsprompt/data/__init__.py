"""Data: class tables, synthetic scenes, TorchGeo datasets, normalisation and augmentation."""
