"""Torch-side training. Importing this package imports torch; the runtime never does."""
