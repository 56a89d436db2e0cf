# Sphinx configuration of the handbook's web site. `make book` (`python -m cocs.book`) copies
# this folder, the executed notebooks, the README and the glossary into build/book-source/ and
# builds build/book/ from there; nothing is executed and nothing is fetched from the network.

project = "Context Clusters: an executable handbook"
author = "the cocs authors"
copyright = "the cocs authors, MIT licence"

extensions = [
    "myst_nb",  # notebooks and MyST markdown
    "sphinx_togglebutton",  # solutions behind a toggle
    "sphinx-mathjax-offline",  # MathJax served from the site itself, not from a CDN
]

# Executed notebooks are rendered as they are: a page shows what its run computed.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = ["mystnb.unknown_mime_type"]

html_theme = "sphinx_book_theme"
html_title = "Context Clusters handbook"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,  # the page's source, as the site holds it
    "navigation_with_keys": False,
}
html_favicon = "favicon.svg"
html_context = {"default_mode": "light"}  # the theme's colour mode before a reader picks one
