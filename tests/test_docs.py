"""The documentation: the README's build command runs warning-free, examples included.

The build is the slowest test (a few minutes on two cores: the four gallery examples run,
as they do for a reader building the docs), so it is built once for every check here.
"""

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PUBLIC_MODULES

from skretrieval.cli import command_parsers

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = sorted(p.stem for p in (DOCS / "examples").glob("plot_*.py"))
CONSTANTS = re.compile(r"^[A-Z][A-Z0-9_]+$|^__")


def _readme_docs_command() -> list[str]:
    """The sphinx-build invocation the README gives, as argv."""
    match = re.search(r"&& (python -m sphinx [^\n`]+)", (ROOT / "README.md").read_text())
    assert match, "README.md no longer shows the docs build command"
    return match.group(1).split()


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    for module in ("sphinx", "numpydoc", "myst_parser", "sphinx_gallery", "pydata_sphinx_theme", "matplotlib"):
        pytest.importorskip(module, reason=f"the docs build needs {module} (pip install -e '.[docs]')")
    tmp = tmp_path_factory.mktemp("docs")
    source = tmp / "docs"  # a copy: generated pages never land in the source tree
    shutil.copytree(DOCS, source, ignore=shutil.ignore_patterns("_build", "generated", "auto_examples"))
    command = _readme_docs_command()
    assert command[:3] == ["python", "-m", "sphinx"] and command[-2:] == ["docs", "docs/_build/html"]
    argv = [sys.executable, *command[1:-2], "--keep-going", str(source), str(tmp / "html")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "WARNING" not in result.stderr, result.stderr[-4000:]
    return tmp / "html"


def test_pages_and_api_reference(html):
    for page in ["getting_started", "user_guide", "fine_tuning", "exact_search", "metrics", "open_set",
                 "persistence", "cli", "scaling_out", "api"]:
        assert (html / f"{page}.html").is_file(), page
    for reserved in ("search", "genindex", "py-modindex"):  # Sphinx's own pages
        assert not list(DOCS.glob(f"{reserved}.*")), f"docs/{reserved}.* would clash with Sphinx's page"
    api = (html / "generated/skretrieval.ImageRetriever.html").read_text()
    assert "skretrieval.ImageRetriever.kneighbors" in api and "prototype_labels_" in api
    guide = (html / "user_guide.html").read_text()
    for sub_page in ["fine_tuning", "exact_search", "metrics", "open_set", "persistence", "cli", "scaling_out"]:
        assert f'href="{sub_page}.html"' in guide, f"the user guide does not link {sub_page}"


def test_examples_ran_and_drew_their_figures(html):
    assert len(EXAMPLES) >= 4
    for name in EXAMPLES:
        page = (html / "auto_examples" / f"{name}.html").read_text()
        figures = re.findall(rf"sphx_glr_{name}_\d+\.png", page)
        assert figures, f"{name} drew no figure"
        for figure in set(figures):
            assert (html / "_images" / figure).stat().st_size > 5_000, figure


def test_every_public_name_is_in_the_api_reference(html):
    reference = (DOCS / "api.rst").read_text()
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        missing += [f"{module_name}.{name}" for name in module.__all__
                    if not CONSTANTS.match(name) and not re.search(rf"^\s+{name}$", reference, re.M)]
    assert not missing, f"not in docs/api.rst: {missing}"
    for name in ["ImageRetriever", "load", "load_image", "list_image_files", "Mixup", "CutMix"]:
        assert list(html.glob(f"generated/*.{name}.html")), name


def test_cli_page_shows_every_command_and_option(html):
    page = (html / "cli.html").read_text()
    for name, parser in command_parsers().items():
        if not name:
            continue  # the top-level parser lists the commands; their own help holds the options
        assert f"usage: skretrieval {name}" in page, name
        for action in parser._actions:
            for option in action.option_strings:
                assert option in page, f"{name} {option}"
