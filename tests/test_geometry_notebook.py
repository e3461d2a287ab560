"""notebooks/gnc_geometry.ipynb, executed top to bottom (nbclient) on a real tiny run."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "notebooks" / "gnc_geometry.ipynb"

pytestmark = pytest.mark.real_data


def outputs(notebook) -> list:
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]


@pytest.mark.slow
def test_notebook_runs_and_shows_table_explanation_and_pictures(
    tiny_run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUGNC_RUN_DIR", str(tiny_run_dir))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not outputs(notebook), "commit the notebook without outputs"
    NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    shown = outputs(notebook)
    assert not [out for out in shown if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in shown if out.output_type == "stream")
    markdown = "".join(out.get("data", {}).get("text/markdown", "") for out in shown)
    assert str(tiny_run_dir) in text and "nc1_trace_ratio" in text and "gnc_intra_angle_deg" in text
    assert "regular 10-gon" in markdown and "Measured on `train`" in markdown
    images = [out for out in shown if "image/png" in out.get("data", {})]
    assert len(images) == 5  # features and cosines of train and test, NC/GNC curves
    assert (tiny_run_dir / "geometry" / "nc_curves.png").is_file()
