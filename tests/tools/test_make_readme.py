import json

import pytest
from conftest import load_tool


@pytest.fixture()
def readme(tmp_path, monkeypatch):
    mod = load_tool("make_readme")
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.csv").write_text("method,setting,ppl\nfull,,20.5\nbi,n=3,30.25\nbi,n=6,61.0\n")
    (tmp_path / "results" / "j.json").write_text(json.dumps({"a": {"b": 0.12345}, "l": [3, 4]}))
    return mod


def test_values_come_from_results(readme):
    assert readme.render("{{cell:t|method=bi,setting=n=6|ppl:.1f}}") == "61.0"
    assert readme.render("{{cell:t|method=full|ppl}}") == "20.5"
    assert readme.render("x {{value:j.a.b:.2f}} {{value:j.l.1}}") == "x 0.12 4"
    table = readme.render("{{table:t|method,ppl}}")
    assert "| bi | 30.25 |" in table and "setting" not in table


def test_ambiguous_or_missing_cells(readme):
    with pytest.raises(ValueError, match="2 rows"):
        readme.render("{{cell:t|method=bi|ppl}}")
    with pytest.raises(ValueError, match="0 rows"):
        readme.render("{{cell:t|method=nope|ppl}}")
    assert "n/a" in readme.render("{{cell:missing|method=bi|ppl}}")
    assert "not yet generated" in readme.render("{{table:missing}}")


def test_repository_address_is_set_once_in_pyproject():
    """The Colab badges and CITATION.cff take the address from pyproject.toml [project.urls]."""
    make_readme = load_tool("make_readme")
    url = make_readme.repository_url()
    assert url.startswith("https://github.com/") and make_readme.REPO_SLUG == url.removeprefix("https://github.com/")
    assert (f"github/{make_readme.REPO_SLUG}/blob/main/notebooks/01_sanity_check.ipynb"
            in make_readme.colab("01_sanity_check"))
    cff = "cff-version: 1.2.0\ntitle: x\nauthors:\n  - name: y\n"
    assert (make_readme.citation(cff)
            == f'cff-version: 1.2.0\ntitle: x\nrepository-code: "{url}"\nauthors:\n  - name: y\n')
    assert (make_readme.citation('repository-code: "https://old"\nauthors: []\n')
            == f'repository-code: "{url}"\nauthors: []\n')
    committed = (make_readme.ROOT / "CITATION.cff").read_text()
    assert f'repository-code: "{url}"' in committed  # the committed file agrees


def test_reruns_name_the_notebooks_run_at_another_commit(readme):
    prov = readme.ROOT / "results" / "provenance.json"
    record = {"code_commit": "a" * 40, "notebooks": {"02_x": {"code_commit": "a" * 40},
                                                     "09_y": {"code_commit": "b" * 40}}}
    prov.write_text(json.dumps(record))
    assert readme.render("at `x`{{reruns:provenance}} (") == "at `x`; notebook 09 rerun alone at `bbbbbbb` ("
    record["notebooks"]["09_y"]["code_commit"] = "a" * 40
    prov.write_text(json.dumps(record))
    assert readme.render("at `x`{{reruns:provenance}} (") == "at `x` ("
    assert readme.render("{{reruns:missing}}") == ""


def test_holds_checks_a_stated_comparison(readme):
    (readme.ROOT / "results" / "j.json").write_text(json.dumps({"a": {"b": 0.12345}, "speed": {"int8": 1.3}}))
    assert readme.render("no better{{holds:t|method=bi,setting=n=3|ppl >= t|method=full|ppl}}.") == "no better."
    assert readme.render("{{holds:j.speed.int8 > 1}}"
                         "{{holds:t|method=bi,setting=n=6|ppl < 3 * t|method=full|ppl}}") == ""
    with pytest.raises(ValueError, match=r"is false \(61 < 41 does not hold\)"):
        readme.render("{{holds:t|method=bi,setting=n=6|ppl < 2 * t|method=full|ppl}}")
    with pytest.raises(ValueError, match="is false"):
        readme.render("{{holds:j.a.b >= 0.2}}")
    with pytest.raises(ValueError, match="LEFT OP RIGHT"):
        readme.render("{{holds:j.a.b=0.2}}")
    assert "not checked" in readme.render("{{holds:missing|method=bi|ppl < 3}}")


def test_committed_readme_is_the_rendered_template():
    """README.md is regenerated from the committed results, and every comparison its prose states holds."""
    make_readme = load_tool("make_readme")
    committed = (make_readme.ROOT / "README.md").read_text()
    # raises if a {{holds:...}} is false
    assert committed == make_readme.readme(), "README.md is stale: run `make readme` and commit it"
    for note in ("not checked", "not yet generated", "(n/a"):
        assert note not in committed
