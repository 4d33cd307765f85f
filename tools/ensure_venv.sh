#!/usr/bin/env bash
# Create .venv on first use, (re)install it when the requirement files or the Python version change,
# and otherwise return at once.  Fast path: uv with the machine's pip indexes; fallback: pip.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
python=${PYTHON:-python3}
inputs="requirements.txt requirements-dev.txt constraints.txt pyproject.toml"

py_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
digest=$(cat $inputs | sha256sum | cut -c1-16)
stamp="$venv/.installed-$digest-py$py_version"
if [ -f "$stamp" ]; then
    exit 0
fi

echo "[ensure_venv] installing into $venv (requirements changed or first use)"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
rm -f "$venv"/.installed-*

# uv does not read pip's configuration: pass the configured extra indexes and find-links explicitly.
uv_args=()
extra_index=$("$venv/bin/python" -m pip config get global.extra-index-url 2>/dev/null || true)
find_links=$("$venv/bin/python" -m pip config get global.find-links 2>/dev/null || true)
for url in $extra_index; do uv_args+=(--extra-index-url "$url"); done
for url in $find_links; do uv_args+=(--find-links "$url"); done
if [ ${#uv_args[@]} -gt 0 ]; then
    uv_args+=(--index-strategy unsafe-best-match)
fi

requirements=(-r requirements.txt -r requirements-dev.txt -c constraints.txt)
if "$venv/bin/python" -m pip install --quiet uv 2>/dev/null && [ -x "$venv/bin/uv" ]; then
    UV_PYTHON_DOWNLOADS=never "$venv/bin/uv" pip install --python "$venv/bin/python" \
        "${uv_args[@]}" "${requirements[@]}" -e .
else
    echo "[ensure_venv] uv unavailable, falling back to pip (a few minutes)"
    "$venv/bin/python" -m pip install "${requirements[@]}" -e .
fi
touch "$stamp"
