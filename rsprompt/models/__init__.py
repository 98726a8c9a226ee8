"""Models: frozen encoders, prompt/adapter methods, decoders and the model registry."""
