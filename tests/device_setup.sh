# Set-up shared by tests/device_check.sh, tests/device_bench.sh and the one-call tools (tests/profile_*_stalls.sh),
# sourced from the repository root; also for a one-off command on the device machine:
# `. tests/device_setup.sh && device_install_wheels && device_kernels`.

# The carried wheels (.whl/*.whl, e.g. gguf, which the machine may lack) into /tmp/site, and PYTHONPATH to them
# and to the repository. Exits 2 if they do not install.
device_install_wheels() {
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl || { echo "device set-up: installing .whl/ failed" >&2; exit 2; }
    export PYTHONPATH=/tmp/site
  fi
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
}

# KERNEL_CACHE: refspec's compiled-kernel cache (it follows XDG_CACHE_HOME: set that first), filled from
# .cache-kernels/kernels.tar.gz where it was carried (tests/device_check.sh hands the cache back as
# $OUT/kernels.tar.gz), so that only changed sources compile.
device_kernels() {
  KERNEL_CACHE=$(python3 -c "from refspec.gpu import kernel_cache_dir; print(kernel_cache_dir())")
  if [ -f .cache-kernels/kernels.tar.gz ]; then
    mkdir -p "$KERNEL_CACHE" && tar -xzf .cache-kernels/kernels.tar.gz -C "$KERNEL_CACHE" \
      && echo "kernel cache: $(ls "$KERNEL_CACHE" | wc -l) files from .cache-kernels" \
      || echo "kernel cache: .cache-kernels/kernels.tar.gz could not be unpacked (compiling afresh)"
  fi
}

# The set-up of a one-call device tool (tests/profile_*_stalls.sh): OUT (default $1) made, the kernel cache under
# XDG_CACHE_HOME (default /tmp/refspec-cache), unbuffered Python, the carried wheels and kernels, and NCU: the
# path of ncu where the machine has one, else empty.
device_tool_setup() {
  OUT=${OUT:-$1}
  mkdir -p "$OUT"
  export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/refspec-cache} PYTHONUNBUFFERED=1
  device_install_wheels
  device_kernels
  NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
}

# The verdict of a pytest log of GPU tests: "passed", "FAILED" (a test failed or erred) or "FAILED (nothing ran)".
# A module that cannot be imported here (a package the machine lacks, e.g. nbformat) holds no GPU test: its
# collection error is not a test's and is not counted.
pytest_log_verdict() {
  if grep -qE '^(FAILED|ERROR) tests/[^ ]*::' "$1"; then echo FAILED
  elif ! grep -qE ' (passed|failed)' "$1"; then echo "FAILED (nothing ran)"
  else echo passed
  fi
}
