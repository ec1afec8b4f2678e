"""The committed notebooks are the build of their sources: an edit to an .ipynb that skipped
notebooks/src/ (or a source edited without a rebuild) fails here, naming the notebook."""

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from build_notebooks import parse  # noqa: E402

SOURCES = sorted((ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py"))


def test_every_source_has_a_notebook_and_back():
    built = {p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    assert SOURCES and {s.stem for s in SOURCES} == built


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_committed_notebook_is_the_build_of_its_source(src):
    committed = nbformat.read(ROOT / "notebooks" / f"{src.stem}.ipynb", as_version=4)
    expected = parse(src.read_text())
    got = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in committed.cells]
    want = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in expected]
    assert got == want, (f"notebooks/{src.stem}.ipynb differs from notebooks/src/{src.name}: "
                         "run tools/build_notebooks.py")
