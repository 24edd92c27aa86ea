"""Sphinx configuration of minidl's documentation (``sphinx-build -W docs docs/_build``).

The API reference is generated from the docstrings (Google style, read by napoleon); the guide
pages are Markdown (MyST). ``tests/test_docs.py`` builds it with warnings as errors.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # document this checkout (its kernels must be built)

import minidl  # noqa: E402

project = "minidl"
author = "the minidl developers"
copyright = "2026, the minidl developers"
version = release = getattr(minidl, "__version__", "")

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the docstrings state types, shapes and dtypes themselves
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, not a second description of each attribute
napoleon_use_param = False  # "a, b: ..." entries stay one item (no cross-reference per name)
napoleon_use_rtype = False  # a return "type" such as "(mean, var)" is text, not a cross-reference
napoleon_custom_sections = ["Shape"]  # rendered as a titled block, as written

html_theme = "alabaster"
# myst.header: included README sections start at "##"; myst.xref_missing: the README links to
# repository files (benchmarks/README.md, examples/) that are not pages of this site.
suppress_warnings = ["myst.header", "myst.xref_missing"]
