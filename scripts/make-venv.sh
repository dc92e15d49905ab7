#!/usr/bin/env bash
# Create the controller's virtualenv with the kit's pinned tools.
# Usage: scripts/make-venv.sh PYTHON VENV
set -euo pipefail
python="${1:-python3}"
venv="${2:-.venv}"

if ! command -v "$python" >/dev/null; then
  echo "error: $python not found; install Python 3.11 or newer (or set PYTHON=...)" >&2
  exit 2
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: $python is $("$python" --version 2>&1); the kit needs Python 3.11 or newer" >&2
  exit 2
fi
if ! "$python" -m venv --help >/dev/null 2>&1; then
  echo "error: $python has no venv module (Debian/Ubuntu: apt-get install python3-venv)" >&2
  exit 2
fi

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --requirement requirements.txt --constraint constraints.txt
# The kit's own package (celery-kit), from this checkout.
"$venv/bin/python" -m pip install --quiet --no-deps --editable kit
touch "$venv/.installed"
echo "$venv is ready"
