"""The documentation site builds offline with `mkdocs build --strict`: a broken link or anchor, a
page missing from the nav, or an API name whose docstring mkdocstrings cannot find fails here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_the_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    done = subprocess.run(build, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    # The docstrings rendered, not just the names: the example of `prune` is on the page.
    assert 'method="hydra", sparsity=0.9' in api.replace("&quot;", '"')
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis" not in home  # nothing fetched when a reader opens it offline
