"""The documentation builds without a warning (examples are not executed here)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_sphinx_build_is_warning_free(tmp_path):
    for module in ("sphinx", "numpydoc", "myst_parser", "sphinx_gallery", "pydata_sphinx_theme"):
        pytest.importorskip(module, reason=f"the docs build needs {module} (pip install -e '.[docs]')")
    source = tmp_path / "docs"  # a copy: generated pages never land in the source tree
    shutil.copytree(DOCS, source, ignore=shutil.ignore_patterns("_build", "generated", "auto_examples"))
    env = {**os.environ, "PYTHONPATH": str(DOCS.parent), "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-D", "plot_gallery=0", str(source), str(tmp_path / "html")],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    html = tmp_path / "html"
    for page in [
        "getting_started.html",
        "user_guide.html",
        "auto_examples/plot_retrieve_digits.html",
        "auto_examples/plot_finetune_compare.html",
        "auto_examples/plot_grid_search.html",
        "auto_examples/plot_near_duplicates.html",
        "generated/skretrieval.ImageRetriever.html",
        "generated/skretrieval.plotting.RetrievalDisplay.html",
        "generated/skretrieval.metrics.retrieval_report.html",
    ]:
        assert (html / page).is_file(), page
    api = (html / "generated/skretrieval.ImageRetriever.html").read_text()
    assert "skretrieval.ImageRetriever.kneighbors" in api and "prototype_labels_" in api
