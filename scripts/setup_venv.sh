#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv) and install the pinned CPU dependencies.
# Idempotent: a stamp records the hash of everything that shapes the environment; when nothing changed
# this returns in well under a second. Used by both README commands (`make run`, `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${SEG4SEG_VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.seg4seg-setup"
want=$(cat requirements/*.txt pyproject.toml scripts/setup_venv.sh scripts/torchvision_cpu_shim.py seg4seg_utils/kernels.py \
  seg4seg_utils/allocator.py | sha256sum | cut -d' ' -f1)

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/python" ]]; then
  exit 0
fi

echo "[setup] preparing $VENV (pinned CPU dependencies; first run: about 20 s with uv, a minute with pip)"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
# The constraints file is what keeps pip from replacing the local torch 2.13.0 CPU wheel with a
# newer CUDA build when smp/timm/open_clip ask for torchvision (see requirements/constraints-cpu.txt).
# uv installs the same pinned set from the same sources as pip, about 10x faster (2-core AMD EPYC: 7 s against
# 68 s; the same 159 packages and versions): it is fetched into the venv and handed pip's configured indexes,
# find-links and certificate. Any failure falls back to pip, which is how this script always installed.
UV_VERSION=0.13.9
pip_install() {
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c requirements/constraints-cpu.txt -r requirements/cpu.txt 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
uv_install() {
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" >/dev/null 2>&1 || return 1
  # pip's configured sources as uv arguments, one per line, after a first line with pip's certificate file
  # (pip weighs every index alike: uv's unsafe-best-match strategy is that behaviour)
  local lines
  mapfile -t lines < <("$VENV/bin/python" - <<'PY'
import shlex, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
args, cert = [], ""
for line in out.splitlines():
    key, _, value = line.partition("=")
    option, value = key.rsplit(".", 1)[-1], " ".join(shlex.split(value))
    if option in ("index-url", "extra-index-url", "find-links"):
        for v in value.split():
            if v not in args:
                args += [f"--{option}", v]
    elif option == "cert":
        cert = value
print(cert, *args, sep="\n")
PY
)
  [[ ${#lines[@]} -ge 1 ]] || return 1
  # --compile-bytecode: uv, unlike pip, leaves the packages uncompiled, and where PYTHONDONTWRITEBYTECODE is set
  # (as on these machines) every process then compiles torch, timm, sklearn and umap from source again: importing
  # them took 20 s per process instead of 8 s (Intel Xeon, 2 cores), in every notebook kernel, worker and child
  SSL_CERT_FILE=${lines[0]:-${SSL_CERT_FILE:-}} "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" \
    --compile-bytecode --index-strategy unsafe-best-match "${lines[@]:1}" -c requirements/constraints-cpu.txt -r requirements/cpu.txt
}
if [[ "${SEG4SEG_INSTALLER:-uv}" == uv ]] && uv_install; then
  echo "[setup] installed with uv $UV_VERSION"
else
  [[ "${SEG4SEG_INSTALLER:-uv}" == uv ]] && echo "[setup] uv could not install here; installing with pip (slower)"
  pip_install
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2> >(grep -v "is ignored" >&2) \
  || "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .

SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

# HF_HUB_OFFLINE=1 by default for everything run from this environment (scripts, pytest, Jupyter
# kernels): nothing can be downloaded here, so hub look-ups must fail fast instead of waiting.
echo "import os; os.environ.setdefault('HF_HUB_OFFLINE', '1')" > "$SITE/seg4seg_offline.pth"
# Pinned CPU kernels (AVX2 at most, MKL reproducibility mode) for every process of this environment, set at
# interpreter start-up so that they are in force before torch loads: see seg4seg_utils/kernels.py.
"$VENV/bin/python" -c "from seg4seg_utils.kernels import KERNEL_ENV; print('import os; ' + '; '.join(f'os.environ.setdefault({k!r}, {v!r})' for k, v in KERNEL_ENV.items()))" > "$SITE/seg4seg_kernels.pth"

# glibc keeps freed memory instead of returning it after every tensor (fewer page faults, no number changes; see
# seg4seg_utils/allocator.py), for every process of this environment: a copy that imports nothing but ctypes
cp seg4seg_utils/allocator.py "$SITE/_seg4seg_allocator.py"
echo "import _seg4seg_allocator; _seg4seg_allocator.keep_freed_memory()" > "$SITE/seg4seg_allocator.pth"

# torchvision on CPU torch: only install the shim where the plain import actually fails.
rm -f "$SITE/seg4seg_torchvision_shim.pth" "$SITE/_seg4seg_torchvision_cpu_shim.py"
if ! err=$("$VENV/bin/python" -c "import torchvision" 2>&1); then
  if grep -q "torchvision::nms does not exist" <<<"$err"; then
    cp scripts/torchvision_cpu_shim.py "$SITE/_seg4seg_torchvision_cpu_shim.py"
    echo "import _seg4seg_torchvision_cpu_shim" > "$SITE/seg4seg_torchvision_shim.pth"
    "$VENV/bin/python" -c "import torchvision" \
      || { echo "[setup] torchvision still fails to import after the CPU shim" >&2; exit 1; }
    echo "[setup] CUDA-built torchvision on CPU torch: installed the operator-schema shim"
  else
    echo "$err" >&2; echo "[setup] import torchvision failed for an unexpected reason" >&2; exit 1
  fi
fi

echo "$want" > "$STAMP"
echo "[setup] environment ready: $("$VENV/bin/python" -c 'import torch, torchvision; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")')"
