"""notebooks/sweep_analysis.ipynb, executed top to bottom on a sweep directory."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "sweep_analysis.ipynb"


def test_sweep_notebook_shows_failed_jobs_heatmap_and_best(
    fake_sweep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUGNC_SWEEP_DIR", str(fake_sweep))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    shown = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in shown if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in shown if out.output_type == "stream")
    markdown = "".join(out.get("data", {}).get("text/markdown", "") for out in shown)
    assert "8 jobs, 2 failed" in text
    assert "| 7 | failed | 0.15 | 1.0 | 1 |" in markdown and "loss is nan" in markdown
    assert "best mean test/acc = 0.9000 at loss.alpha=0.15, loss.beta=1.0" in text
    assert any("image/png" in out.get("data", {}) for out in shown)
