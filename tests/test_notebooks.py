"""Every notebook in notebooks/ runs headless on the committed results.

Each notebook finds the repository root as the nearest directory above its working directory that
holds pyproject.toml. The test runs it from a scratch root whose results/ is the repository's and
whose figures/ is empty, so the committed figures are not rewritten, and checks it wrote a figure.
"""

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_on_committed_results(path: Path, tmp_path: Path):
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    (tmp_path / "results").symlink_to(REPO / "results")
    (tmp_path / "figures").mkdir()
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    assert any((tmp_path / "figures").iterdir()), f"{path.name} wrote no figure"
