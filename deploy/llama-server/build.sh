#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (an OpenAI-compatible model server) from the llama.cpp
# sources that the llama-cpp-python source package carries on the Python package index, with
# cmake from the package index too; the result is cached outside the repository. Prints the
# binary's path. Used by .ci/run for the remote-generator tests; users may use it the same way.
#
#   deploy/llama-server/build.sh            # -> ~/.cache/ragd/llama-server-0.3.36/bin/llama-server
#   LLAMA_SERVER_CACHE=/opt/llama deploy/llama-server/build.sh
set -euo pipefail
version=0.3.36
# The source package on the Python package index (its simple API gives this address and digest).
sdist=https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
cache="${LLAMA_SERVER_CACHE:-$HOME/.cache/ragd/llama-server-$version}"
bin="$cache/bin/llama-server"
if [ -x "$bin" ]; then
    echo "$bin"
    exit 0
fi
mkdir -p "$cache"
{
    [ -x "$cache/venv/bin/cmake" ] || {
        python3 -m venv "$cache/venv"
        "$cache/venv/bin/python" -m pip install -q --disable-pip-version-check "cmake>=3.28,<4" "ninja>=1.11"
    }
    rm -rf "$cache/src" "$cache/build"
    mkdir -p "$cache/src"
    # Downloaded as a file: `pip download` would build the package's build tools to read its
    # metadata.
    curl -fsSL --retry 3 -o "$cache/src/sdist.tar.gz" "$sdist"
    echo "$sha256  $cache/src/sdist.tar.gz" | sha256sum -c --quiet -
    tar -xzf "$cache/src/sdist.tar.gz" -C "$cache/src"
    # Portable x86-64-v3 code (the project's build target), no downloads at run time (no curl).
    PATH="$cache/venv/bin:$PATH" cmake -S "$cache/src/llama_cpp_python-$version/vendor/llama.cpp" \
        -B "$cache/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
    PATH="$cache/venv/bin:$PATH" cmake --build "$cache/build" --target llama-server -j "$(nproc)"
    mkdir -p "$cache/bin"
    cp "$cache/build/bin/llama-server" "$bin.tmp"
    mv "$bin.tmp" "$bin"
    rm -rf "$cache/src" "$cache/build"
} >&2
echo "$bin"
