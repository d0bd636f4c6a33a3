#!/usr/bin/env bash
# Run a module of this checkout with a Python that does not have the project installed
# (a GPU machine's, whose Python may have no build backend):
#
#   PYTHON=python3 bench/unpacked.sh bench.line_bench --out DIR ...
#
# A tree of links lays the role folders out as the package they install as
# (pyproject.toml's package-dir: server/ is anogan_inspect.server, and so on); child
# processes (servers, client processes) inherit the PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
tree="$(mktemp -d)"
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/anogan_inspect"
ln -s "$PWD"/anogan_inspect/*.py "$tree/anogan_inspect/"
for role in server trainer clients; do ln -s "$PWD/$role" "$tree/anogan_inspect/$role"; done
# PYTHONSAFEPATH: `-m` would otherwise put the checkout first on sys.path, where
# anogan_inspect/ lacks the role folders.
PYTHONSAFEPATH=1 PYTHONPATH="$tree:$PWD${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m "$@"
