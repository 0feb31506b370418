#!/usr/bin/env bash
# make docs: the notebooks run in replay mode into docs/tutorials/ (not committed), then mkdocs builds the site
# into build/site in strict mode: a broken link, a missing reference or an undocumented public name fails it.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python scripts/docs_notebooks.py docs/tutorials
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet
echo "docs: built build/site/index.html"
