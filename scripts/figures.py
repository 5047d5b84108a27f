"""Regenerate every figure: execute each notebook in notebooks/ in place (headless).

    .venv/bin/python scripts/figures.py [NAME ...]

Notebooks read only results/ and write figures/ (PNG and PDF); their outputs are saved.
"""

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def main(names: list[str]) -> None:
    paths = sorted((REPO / "notebooks").glob("*.ipynb"))
    for path in paths:
        if names and path.stem not in names:
            continue
        print(f"[figures] executing {path.relative_to(REPO)}", flush=True)
        notebook = nbformat.read(path, as_version=4)
        NotebookClient(
            notebook,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(REPO)}},
        ).execute()
        nbformat.write(notebook, path)


if __name__ == "__main__":
    main(sys.argv[1:])
