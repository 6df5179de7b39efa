#!/usr/bin/env bash
# Installs the project into .venv (if needed) and runs the whole test suite.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec .venv/bin/python -m pytest -q -rs -p no:cacheprovider tests "$@"
