#!/usr/bin/env bash
# Makes the Python venv the admin tests parse /metrics with: the official
# Prometheus client's text parser (PyPI prometheus_client, pinned). Idempotent:
# a venv that already imports it is kept. Prints the venv's python.
# Usage: tests/admin/setup.sh   (needs python3 with venv)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv"
python="$venv/bin/python"
if [ -x "$python" ] && "$python" -c 'import prometheus_client.parser' 2>/dev/null; then
    echo "$python"
    exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check prometheus_client==0.26.0 >&2
"$python" -c 'import prometheus_client.parser'
echo "$python"
