#!/usr/bin/env bash
# Builds switchboard-bus into a virtual environment and runs its tests: the
# pytest suite (the seed's own tests among them), the doctests, mypy --strict
# on the package and on code using it, and stubtest of the native module.
#
#   python/test.sh            reuse python/target/venv (made on first use)
#   python/test.sh --fresh    a new virtual environment (what CI runs)
#
# Needs CPython >= 3.9 with headers and pip, and a Rust toolchain; maturin,
# pytest, pytest-asyncio and mypy come from the package registry.
set -euo pipefail
cd "$(dirname "$0")"
python="${PYTHON:-python3}"
venv=target/venv
if [[ "${1:-}" == "--fresh" ]]; then
  venv="$(mktemp -d)/venv"
fi
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "maturin>=1.16,<2" "pytest>=8" "pytest-asyncio>=0.23" "mypy>=1.8"
fi
echo "-- building and installing the wheel"
"$venv/bin/pip" install -q --force-reinstall --no-deps .
echo "-- pytest"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests
echo "-- mypy --strict"
"$venv/bin/python" -m mypy --strict --no-incremental python/switchboard_bus typing examples
echo "-- stubtest"
(cd typing && "../$venv/bin/python" -m mypy.stubtest --ignore-missing-stub switchboard_bus._native)
