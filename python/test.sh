#!/usr/bin/env bash
# Builds switchboard-bus into a virtual environment and runs its tests: the
# pytest suite (the seed's own tests among them, the doctests, the bot demo),
# mypy --strict on the package and on code using it, and stubtest of the
# native module.
#
#   python/test.sh            reuse python/target/venv (made on first use)
#   python/test.sh --fresh    a new virtual environment (what CI runs)
#   ... --bench               also a quick run of the bench (its counts are
#                             checked; its numbers are not judged)
#
# Needs CPython >= 3.9 with headers and pip, and a Rust toolchain; maturin,
# pytest, pytest-asyncio and mypy come from the package registry.
set -euo pipefail
cd "$(dirname "$0")"
python="${PYTHON:-python3}"
venv=target/venv
bench=0
for arg in "$@"; do
  case "$arg" in
    --fresh)
      scratch="$(mktemp -d)"
      trap 'rm -rf "$scratch"' EXIT
      venv="$scratch/venv"
      ;;
    --bench) bench=1 ;;
    *) echo "usage: $0 [--fresh] [--bench]" >&2; exit 2 ;;
  esac
done
if [[ ! -x "$venv/bin/python" ]]; then
  echo "-- a virtual environment in $venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "maturin>=1.16,<2" "pytest>=8" "pytest-asyncio>=0.23" "mypy>=1.8"
fi
py="$(cd "$(dirname "$venv")" && pwd)/$(basename "$venv")/bin/python"
# The build runs maturin from the environment (no build isolation: nothing
# is fetched per build).
export PATH="$(dirname "$py"):$PATH"
echo "-- building the wheel and installing it"
"$py" -m pip install -q --force-reinstall --no-deps --no-build-isolation .
echo "-- pytest"
"$py" -m pytest -q -p no:cacheprovider tests
echo "-- mypy --strict"
"$py" -m mypy --strict --no-incremental --cache-dir=/dev/null python/switchboard_bus typecheck examples bench
echo "-- stubtest"
(cd typecheck && "$py" -m mypy.stubtest switchboard_bus._native)
if [[ "$bench" == 1 ]]; then
  echo "-- the bench, quick"
  "$py" bench/bench.py --quick
fi
