"""Sphinx configuration: the Markdown pages of docs/ (MyST), the furo theme, an API reference from docstrings.

Build: pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html   (also: tox -e docs)
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import minidist  # noqa: E402

project = "minidist"
author = "the minidist authors"
copyright = "2026, the minidist authors"
version = release = minidist.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_heading_anchors = 3  # links such as network.md#tls work as on GitHub
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}

html_theme = "furo"
html_title = f"minidist {release}"
