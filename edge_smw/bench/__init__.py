"""``edge-smw bench``: the toolkit's claims, measured in one process on one machine.

- ``run``: ``run_bench(BenchOptions)`` -> a ``BenchReport``.
- ``results``: the typed rows and ``BenchReport``; ``to_dict()`` is bench.json, ``from_dict``
  reads it back.
- ``latency``: interleaved round-robin timing, peak memory in child processes, speed-ups.
- ``endtoend``: JPEG frame -> decode -> detect -> crop -> preprocess -> infer, single and
  pipelined.
- ``flops`` + ``machine``: MACs counted from the ONNX graph, the machine's measured peak.
- ``parity``: Polygraphy-style comparison with the torch model; agreement, accuracy, MAE.
- ``golden``: the torch model's outputs saved with their inputs, checked without torch.
- ``robustness`` (torch): fooling images made on torch fp32, judged by every export, plus a
  black-box attack on the int8 model itself.
- ``config``: suites and gates (TOML); ``report``: bench.json, bench.md, plots, the table.

Importing this package imports neither torch nor onnx.
"""
