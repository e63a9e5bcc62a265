"""The README's Python example runs as it is written (on the real Fashion-MNIST slice)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def python_block(section: str) -> str:
    text = README.read_text(encoding="utf-8")
    body = text[text.index(f"## {section}") :]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


def test_the_python_api_example_runs(capsys):
    code = python_block("Python API")
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "'clean'" in printed and "'pgd'" in printed
    assert type(namespace["small"]).__name__ == "SmallCNN"
