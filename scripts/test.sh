#!/usr/bin/env bash
# Installs meterline with its test extras into .venv and runs the whole test suite (lint included).
# Used as-is by the README and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,tokenizer]'

.venv/bin/ruff check src tests bench
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
