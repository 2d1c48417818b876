"""Sphinx configuration: numpydoc API reference, the Markdown user guide, a gallery of examples.

Build with ``python -m sphinx -W -b html docs docs/_build/html``; add ``-D plot_gallery=0`` to
skip running the examples.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "skretrieval").is_dir():
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

import skretrieval  # noqa: E402

project = "skretrieval"
author = "skretrieval developers"
copyright = "2026, skretrieval developers"
version = release = skretrieval.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "cli_help",  # docs/_ext: the command line's --help texts, read from its parser
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_ext", "examples/GALLERY_HEADER.rst", "auto_examples/*.ipynb",
                    "auto_examples/*.py", "auto_examples/*.zip"]
myst_heading_anchors = 3

autosummary_generate = True
# Methods a class inherits from the package's own mixins (e.g. kneighbors from the shared
# gallery core) are its API too; those of scikit-learn's and torch's base classes are not.
autodoc_default_options = {"members": True, "inherited-members": "BaseEstimator,Module,object"}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "within_subsection_order": "FileNameSortKey",
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
    "show_memory": False,
    "write_computation_times": False,
}

html_theme = "pydata_sphinx_theme"
html_title = f"skretrieval {release}"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_static_path = []
templates_path = ["_templates"]


def _skip_foreign_members(app, what, name, obj, skip, options):
    """Document a class's own methods; scikit-learn's and torch's are documented there."""
    if what == "class" and callable(obj) and not (getattr(obj, "__module__", "") or "").startswith("skretrieval"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign_members)
