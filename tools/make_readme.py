"""Render README.md from README.template.md, filling every number from results/.

Placeholders:
  {{table:NAME}}                 results/NAME.csv as a Markdown table (floats to 4 significant digits)
  {{table:NAME|col1,col2}}       only those columns
  {{figure:NAME}}                ![NAME](figures/NAME.png)
  {{value:NAME.key.sub:FMT}}     one value from results/NAME.json, formatted with FMT (e.g. .2f)
  {{cell:NAME|col=v,col2=w|target:FMT}}
                                 one cell of results/NAME.csv: the single row whose columns equal
                                 the given values (as written in the file), column `target`
  {{colab:NN_name}}              an "Open in Colab" badge for notebooks/NN_name.ipynb
  {{holds:LEFT OP RIGHT}}        renders nothing; raises when the comparison is false. OP is one of
                                 < <= > >= (spaces around it); each side is a number, a cell as in
                                 {{cell:...}} (NAME|col=v|target), a value as in {{value:...}}
                                 (NAME.key.sub, no format) or `FACTOR * ` one of these. Put one
                                 beside every sentence that states a comparison in words ("no better
                                 than", "within the goal"), so that a rerun which changes the numbers
                                 cannot leave the words behind.
A missing file renders as a visible "(not yet generated: ...)" note instead of a stale number.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent


def repository_url() -> str:
    """The repository address, set in one place: pyproject.toml [project.urls] Repository (read with a
    pattern, not tomllib, which Python 3.10 lacks)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = re.search(r"^\[project\.urls\]\n(.*?)(?=^\[|\Z)", text, flags=re.M | re.S)
    url = re.search(r'^Repository\s*=\s*"([^"]+)"', section.group(1) if section else "", flags=re.M)
    if url is None:
        raise ValueError('pyproject.toml needs [project.urls] Repository = "https://github.com/<owner>/<name>"')
    return url.group(1)


REPO_SLUG = urlparse(repository_url()).path.strip("/")  # GitHub owner/name, for the Colab badges
PLACEHOLDER = re.compile(r"\{\{(\w+):([^}]+)\}\}")


def _fmt(cell: str) -> str:
    try:
        x = float(cell)
    except ValueError:
        return cell.replace("|", "\\|").replace("\n", " ")
    if x.is_integer() and "." not in cell and "e" not in cell.lower():
        return cell
    return f"{x:.4g}"


def table(arg: str) -> str:
    name, _, cols = arg.partition("|")
    path = ROOT / "results" / f"{name}.csv"
    if not path.is_file():
        return f"*(not yet generated: results/{name}.csv — run `make reproduce`)*"
    with path.open() as f:
        rows = list(csv.DictReader(f))
    header = cols.split(",") if cols else list(rows[0].keys())
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in header) + " |" for r in rows]
    return "\n".join(lines) + f"\n\n<sub>source: `results/{name}.csv`</sub>"


def figure(name: str) -> str:
    if not (ROOT / "figures" / f"{name}.png").is_file():
        return f"*(not yet generated: figures/{name}.png)*"
    return f"![{name}](figures/{name}.png)"


class MissingResult(Exception):
    """A placeholder reads a results file that is not there (yet): rendered as a visible note."""


def _json_value(ref: str):
    """The value at `NAME.key.sub` of results/NAME.json; MissingResult when the file is not there."""
    name, *keys = ref.split(".")
    path = ROOT / "results" / f"{name}.json"
    if not path.is_file():
        raise MissingResult(f"results/{name}.json")
    v = json.loads(path.read_text())
    while keys:  # a JSON key may itself contain dots ("0.2"): take the shortest run of parts that is a key
        if isinstance(v, list):
            v, keys = v[int(keys[0])], keys[1:]
            continue
        for n in range(1, len(keys) + 1):
            if ".".join(keys[:n]) in v:
                v, keys = v[".".join(keys[:n])], keys[n:]
                break
        else:
            raise KeyError(f"{{{{value:{ref}}}}}: no key {'.'.join(keys)!r} in results/{name}.json")
    return v


def _cell_value(ref: str) -> str:
    """The cell `NAME|col=v,col2=w|target` of results/NAME.csv (the single matching row), as written;
    MissingResult when the file is not there."""
    name, where, target = (part.strip() for part in ref.split("|"))
    path = ROOT / "results" / f"{name}.csv"
    if not path.is_file():
        raise MissingResult(f"results/{name}.csv")
    conditions = dict(c.split("=", 1) for c in where.split(","))
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if all(r.get(k) == v for k, v in conditions.items())]
    if len(rows) != 1:
        raise ValueError(f"{{{{cell:{ref}}}}}: {len(rows)} rows of results/{name}.csv match {conditions}, "
                         "need exactly 1")
    return rows[0][target]


def value(arg: str) -> str:
    ref, _, fmt = arg.partition(":")
    try:
        v = _json_value(ref)
    except MissingResult as missing:
        return f"*(n/a: {missing})*"
    return format(v, fmt) if fmt else str(v)


def cell(arg: str) -> str:
    head, _, last = arg.rpartition("|")  # the format follows the target column: NAME|where|target:FMT
    target, _, fmt = last.partition(":")
    ref = f"{head}|{target}"
    try:
        v = _cell_value(ref)
    except MissingResult as missing:
        return f"*(n/a: {missing})*"
    return format(float(v), fmt) if fmt else v


COMPARISONS = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__}


def _operand(side: str) -> float:
    """A number, a cell `NAME|col=v|target` or a JSON value `NAME.key.sub`, optionally scaled as
    `FACTOR * reference` (MissingResult when a results file it reads is not there)."""
    factor, star, ref = side.partition(" * ")
    if star:
        return float(factor) * _operand(ref.strip())
    try:
        return float(side)
    except ValueError:
        pass
    return float(_cell_value(side) if "|" in side else _json_value(side))


def holds(arg: str) -> str:
    """Nothing when `LEFT OP RIGHT` is true of the results; ValueError saying which claim failed otherwise
    (a visible note when a results file it reads is missing)."""
    parts = re.split(r"\s(<=|>=|<|>)\s", arg)
    if len(parts) != 3:
        raise ValueError(f"{{{{holds:{arg}}}}}: need `LEFT OP RIGHT` with one of "
                         f"{' '.join(COMPARISONS)} between spaces")
    left, op, right = parts
    try:
        a, b = _operand(left.strip()), _operand(right.strip())
    except MissingResult:
        return f"*(not checked: {arg} — run `make reproduce`)*"
    if not COMPARISONS[op](a, b):
        raise ValueError(f"{{{{holds:{arg}}}}} is false ({a:g} {op} {b:g} does not hold): the prose beside it in "
                         "README.template.md states a comparison the results no longer support; rewrite it")
    return ""


def colab(nb: str) -> str:
    url = f"https://colab.research.google.com/github/{REPO_SLUG}/blob/main/notebooks/{nb}.ipynb"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def reruns(name: str) -> str:
    """"; notebook NN rerun alone at `commit`" for each notebook that `results/{name}.json` (the
    provenance) records at another commit than the full run's (a later `reproduce.py --only`)."""
    path = ROOT / "results" / f"{name}.json"
    if not path.is_file():
        return ""
    record = json.loads(path.read_text())
    later = {nb[:2]: r["code_commit"][:7] for nb, r in record.get("notebooks", {}).items()
             if r["code_commit"] != record["code_commit"]}
    return "".join(f"; notebook {nb} rerun alone at `{commit}`" for nb, commit in sorted(later.items()))


def render(text: str) -> str:
    kinds = {"table": table, "figure": figure, "value": value, "cell": cell, "colab": colab, "reruns": reruns,
             "holds": holds}
    return PLACEHOLDER.sub(lambda m: kinds[m[1]](m[2].strip()), text)


def citation(text: str) -> str:
    """CITATION.cff with its `repository-code` line set to the repository address."""
    line = f'repository-code: "{repository_url()}"'
    if re.search(r"^repository-code:.*$", text, flags=re.M):
        return re.sub(r"^repository-code:.*$", line, text, flags=re.M)
    return text.replace("\nauthors:", f"\n{line}\nauthors:", 1)


def readme() -> str:
    """README.md's text: the template rendered from results/, under a line saying so."""
    template = (ROOT / "README.template.md").read_text()
    return ("<!-- Generated by tools/make_readme.py from README.template.md and results/: edit the template. -->\n"
            + render(template))


def main() -> int:
    (ROOT / "README.md").write_text(readme())
    cff = ROOT / "CITATION.cff"
    cff.write_text(citation(cff.read_text()))
    print("wrote README.md and CITATION.cff")
    return 0


if __name__ == "__main__":
    sys.exit(main())
