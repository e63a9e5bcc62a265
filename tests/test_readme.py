"""The README is an entry point that cannot go stale: its Python example runs as it is written
(on the real Fashion-MNIST slice), its table of methods is the method registry's, and it holds no
lab notes (commit hashes)."""

from __future__ import annotations

import re
from pathlib import Path

from pymdownx.slugs import slugify

from advprune.methods import (
    TRAINED,
    FixedMaskMethod,
    GateLearningMethod,
    get_method,
    method_names,
)

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
FIDELITY = ROOT / "docs" / "fidelity.md"
HOME = ROOT / "docs" / "index.md"  # the site's home page shows the same table


def section(path: Path, title: str) -> str:
    text = path.read_text(encoding="utf-8")
    body = text[text.index(f"## {title}\n") :]
    end = body.find("\n## ", 1)
    return body if end < 0 else body[:end]


def python_block(path: Path, title: str) -> str:
    return re.search(r"```python\n(.*?)```", section(path, title), re.S).group(1)


def test_the_python_api_example_runs(capsys):
    code = python_block(README, "Python API")
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "'clean'" in printed and "'pgd'" in printed
    assert type(namespace["small"]).__name__ == "SmallCNN"


def test_the_user_guide_shows_the_tested_example():
    guide = (ROOT / "docs" / "guide" / "python-api.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", guide, re.S).group(1)
    assert block == python_block(README, "Python API")


def fidelity_anchor(name: str) -> str:
    """The docs/fidelity.md section of a published method: the heading that names it first
    ("## ANP-VS (Madaan, …)" for anpvs), as GitHub and the site slug it."""
    for line in FIDELITY.read_text(encoding="utf-8").splitlines():
        if not line.startswith("## "):
            continue
        if line[3:].split()[0].replace("-", "").lower() == name.replace("-", ""):
            return slugify(case="lower")(line[3:], "-")
    raise AssertionError(f"docs/fidelity.md has no section for the published method {name}")


def method_row(name: str, docs: str) -> str:
    cls = get_method(name)
    if cls.reference is not None:
        paper, code = cls.reference.split("; ")
        paper = f"{paper} ([code](https://github.com/{code}))"
        fidelity = f"[{name}]({docs}fidelity.md#{fidelity_anchor(name)})"
    else:
        paper, fidelity = cls.origin, "–"
    structures = getattr(cls, "structures", ())
    if issubclass(cls, GateLearningMethod):
        prunes = "– / units and channels, learnt"
    elif cls.reference is None or "channels" in structures:
        prunes = "yes / yes"
    elif issubclass(cls, FixedMaskMethod) and cls.starts_from == TRAINED:
        # advprune's channel extension of a method whose code prunes weights only
        prunes = "yes / yes, as a departure"
    else:
        prunes = "yes / –"
    return f"| `{name}` | {paper} | {cls.kind} | {prunes} | {fidelity} |"


def methods_table(docs: str) -> str:
    """The table of methods as the registry gives it (advprune's own methods, not plugins);
    `docs` is the path from the page to docs/."""
    names = [n for n in method_names() if get_method(n).__module__.startswith("advprune.")]
    header = "| method | paper (official code) | kind | unstructured / channels | fidelity |"
    rows = [header, "|---|---|---|---|---|", *(method_row(n, docs) for n in names)]
    return "\n".join(rows)


def test_the_methods_table_is_the_registrys():
    for page, docs in ((README, "docs/"), (HOME, "")):
        expected = methods_table(docs)
        assert expected in page.read_text(encoding="utf-8"), (
            f"{page.name}'s table of methods is not the registry's; it should read:\n{expected}"
        )


def test_the_readme_is_an_entry_point():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    assert "pip install torch==2.13.0" in text
    assert "make demo" in text and "make test" in text
    hashes = [w for w in re.findall(r"\b[0-9a-f]{7,40}\b", text) if re.search(r"[a-f]", w)]
    assert not [w for w in hashes if re.search(r"\d", w)], hashes  # lab notes go to the lab log


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, as GitHub and the site (mkdocs.yml) slug them."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), re.M)
    return {slugify(case="lower")(heading, "-") for heading in headings}


def test_the_readmes_links_resolve():
    """The site's --strict build checks the docs' links (tests/test_docs.py); the README lies
    outside the site, so its links to files and sections are checked here."""
    links = re.findall(r"\]\(([^)]+)\)", README.read_text(encoding="utf-8"))
    local = [link for link in links if not link.startswith("https://")]
    assert any("#" in link for link in local)
    for link in local:
        path, _, anchor = link.partition("#")
        assert (ROOT / path).is_file(), link
        assert not anchor or anchor in anchors(ROOT / path), link
