"""Torch-side training (torch is imported by its modules; ``settings`` is torch-free and
holds the choices the CLI offers). The runtime never imports this package's torch modules."""
