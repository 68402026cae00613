"""The trade-off table's tool (``python -m edge_smw.export.tradeoff``): which variants a CPU
can measure, and what the table says about the rest."""

from __future__ import annotations

from edge_smw.export import quantize as Q
from edge_smw.export.tradeoff import VARIANTS, table

AVX2 = {"machine": "x86_64", "vnni": False}
VNNI = {"machine": "x86_64", "vnni": True}


def test_a_variant_whose_weights_saturate_on_this_cpu_is_not_measured() -> None:
    eight_bit = [v for v in VARIANTS if v.flavour is Q.Flavour.CPU and v.target_cpu == "x86-vnni"]
    assert len(eight_bit) == 1
    assert "no VNNI" in (eight_bit[0].mismatch(AVX2) or "")
    # every variant runs right with VNNI; without it, the 7-bit cpu flavour and the tensorrt
    # flavour (onnxruntime's S8S8 kernels there) still do
    assert all(v.mismatch(VNNI) is None for v in VARIANTS)
    measured = [v for v in VARIANTS if v.mismatch(AVX2) is None]
    assert {(v.flavour, v.target_cpu) for v in measured} == {
        (Q.Flavour.CPU, "x86-avx2"), (Q.Flavour.TENSORRT, "x86-vnni")}


def test_every_variant_runs_the_steps_that_are_on_request() -> None:
    from edge_smw.export.settings import ExportSettings

    base = ExportSettings(int8=True)
    for variant in VARIANTS:
        settings = variant.settings(base)
        assert settings.target_cpu == variant.target_cpu
        assert settings.equalize and settings.equalize_clipped  # both equalization rows
        assert settings.centre_activations == (variant.flavour is Q.Flavour.TENSORRT)


def _parity(agreement: float) -> dict:
    return {"top1_agreement": agreement, "top1_agreement_interval": [agreement - 0.01, 1.0],
            "n": 100, "accuracy": 0.9, "accuracy_torch": 0.9}


def test_the_table_quotes_the_cpu_flags_and_what_was_not_measured() -> None:
    rows = [{"model": m, "technique": "t", "val": _parity(a), "test": _parity(a),
             "latency_ms_p50": 2.0, "speedup_vs_fp32": s}
            for m, a, s in (("fp32 (onnxruntime)", 1.0, 1.0), ("tensorrt: naive", 0.95, 0.5))]
    result = {"rows": rows, "calibration": {"crops": 128}, "latency_runs": 200, "threads": 2,
              "machine": {"model": "AMD EPYC", "machine": "x86_64", "vnni": False},
              "cpu_flags": {"avx2": True, "avx512f": False, "f16c": True},
              "not_measured": [{"model": "cpu, 8-bit weights", "why": "no VNNI here"}]}
    text = table(result)
    assert "| tensorrt: naive | t | 95.00% (94.0-100.0) |" in text
    assert "flags: avx2 f16c)" in text and "avx512f" not in text
    assert "Not measured: cpu, 8-bit weights: no VNNI here." in text
    assert "saturate" not in text


def test_a_row_with_8_bit_cpu_weights_says_they_saturate_where_they_do() -> None:
    row = {"model": "cpu: naive", "technique": "defaults", "val": _parity(0.8),
           "test": _parity(0.8), "latency_ms_p50": 2.0, "speedup_vs_fp32": 1.5,
           "flavour": "cpu", "reduce_range": False}
    result = {"rows": [row], "calibration": {"crops": 128}, "latency_runs": 200, "threads": 2}
    on_avx2 = table({**result, "machine": {"model": "", **AVX2}})
    assert "| cpu: naive | defaults; 8-bit weights on a CPU without VNNI" in on_avx2
    assert "saturate" not in table({**result, "machine": {"model": "", **VNNI}})
    seven_bit = {**row, "reduce_range": True}
    assert "saturate" not in table({**result, "rows": [seven_bit],
                                    "machine": {"model": "", **AVX2}})
