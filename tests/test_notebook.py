"""examples/transfer_learning.ipynb runs top to bottom (nbclient, the project's Python as its kernel) on a
subset of the sample data, so it never goes stale, and its saved outputs stay small and hold no photo."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import missing, shared_data

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "transfer_learning.ipynb"
SAVED_LIMIT = 400_000            # bytes: readable on GitHub


def test_the_saved_notebook_is_small_and_holds_no_photo():
    saved = json.loads(NOTEBOOK.read_text())
    assert NOTEBOOK.stat().st_size < SAVED_LIMIT
    gradcam = [cell for cell in saved["cells"] if cell["cell_type"] == "code" and "explain(" in "".join(cell["source"])]
    assert len(gradcam) == 1 and not any("image/png" in output.get("data", {}) for output in gradcam[0]["outputs"])


@pytest.mark.integration
def test_the_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    data = shared_data("cats-vs-dogs-2k")
    if not data.is_dir():
        missing(f"{data} not found")
    monkeypatch.setenv("VGGTUNE_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("VGGTUNE_NOTEBOOK_DATA", str(data))
    monkeypatch.setenv("VGGTUNE_NOTEBOOK_RUN", str(tmp_path / "runs" / "notebook"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    printed = "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                        for output in cell.outputs)
    assert "cat: 24 images" in printed and "dog: 24 images" in printed
    assert "block5:  7,079,424 parameters, trainable: False" in printed
    assert "test accuracy" in printed and "same label on 100%" in printed
    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) == 5               # two curves, the confusion matrix, two Grad-CAM overlays
    assert (tmp_path / "runs" / "notebook" / "model.onnx").is_file()
