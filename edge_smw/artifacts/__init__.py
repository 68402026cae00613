"""The floor under export, runtime, bench, predict, explain and serve: what artifacts exist
(``formats``), where they live (``folders``: run and export folders as objects) and how an
onnxruntime session is built (``sessions``). Torch-free; imports nothing heavy.

An exported model's metadata is read with ``edge_smw.metadata.ModelInfo.from_file``.
"""
