"""benchmarks/render_results.py regenerates RESULTS.md from a bench run: every hand-written
section of the page must survive that (the figures between them are generated)."""

from __future__ import annotations

from pathlib import Path

from tests.scripts import load_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script():
    return load_script(BENCHMARKS / "render_results.py")


OLD = """# Benchmark results
<!-- notes -->
hand notes
<!-- /notes -->
generated targets
<!-- tradeoff -->
old table
<!-- /tradeoff -->
<!-- tradeoff-notes -->
what the earlier tables said
<!-- /tradeoff-notes -->
<!-- ray -->
ray figures
<!-- /ray -->
generated body
"""


def test_a_new_table_replaces_only_the_table() -> None:
    hand = _script().hand_sections(OLD, "new table\n")
    assert hand["tradeoff"] == "<!-- tradeoff -->\nnew table\n<!-- /tradeoff -->"
    assert "hand notes" in hand["notes"]
    assert "what the earlier tables said" in hand["tradeoff_notes"]
    assert "ray figures" in hand["ray"]
    assert not any("generated" in text for text in hand.values())


def test_without_a_new_table_the_old_one_is_kept() -> None:
    hand = _script().hand_sections(OLD)
    assert "old table" in hand["tradeoff"]
    assert _script().hand_sections("")["notes"] == "<!-- notes -->\n<!-- /notes -->"


def test_results_page_keeps_its_hand_written_text_in_kept_sections() -> None:
    """Between the trade-off table and the Ray section RESULTS.md holds only hand-written
    notes, so they must sit in a kept section (they once did not: a regenerated page would
    have dropped the earlier tables and what they said)."""
    page = (BENCHMARKS / "RESULTS.md").read_text(encoding="utf-8")
    hand = _script().hand_sections(page)
    assert all(hand[key] for key in ("tradeoff", "tradeoff_notes", "ray"))
    between = page[page.index("<!-- /tradeoff -->") + len("<!-- /tradeoff -->"):
                   page.index("<!-- ray -->")]
    assert between.replace(hand["tradeoff_notes"], "").strip() == ""
