"""The SASS of kernels as the device machine compiled them, read here, with no device time: the compiled-kernel cache
the device hands back (.cache-kernels/kernels.tar.gz, tests/device_check.sh) holds each module's binary under a key
of its source, options, instances and toolchain (refspec.gpu.GpuBackend._load_module); PyPI's nvidia-cuda-nvdisasm
disassembles it. A tool, not a test:

    pip install --target /tmp/nvd nvidia-cuda-nvdisasm   (then chmod +x /tmp/nvd/nvidia/cu13/bin/nvdisasm)
    python3 tests/sass_from_cache.py q8_gemv "q8_gemv<1, 2, 1, 1>" [OUT_DIR]

The module is the backend's production GEMV module for q8_gemv instances (refspec.gpu_mappings.production_gemv_names,
as on the H200: CUDA, tensor cores from GEMV_MMA_MIN_ROWS rows), else the module compiled for that one instance
alone. TOOLCHAIN (default "cuda,14.2.0,13.0,90": CuPy, NVRTC and compute capability of the device machine) and
NVDISASM (default /tmp/nvd/nvidia/cu13/bin/nvdisasm) can be set. Writes OUT_DIR/<instance>.sass (default /tmp/sass).

The binaries in the cache end one byte short of their last program header (the driver loads them; nvdisasm calls
them invalid ELF; why, not looked into): a zero byte is appended to a copy first.
"""
from __future__ import annotations

import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile

from refspec.gpu import COMPILE_OPTIONS, kernel_cache_name
from refspec.gpu_mappings import GEMV_MMA_MIN_ROWS, production_gemv_names

stem, instance = sys.argv[1], sys.argv[2]
out_dir = pathlib.Path(sys.argv[3] if len(sys.argv) > 3 else "/tmp/sass")
platform, cupy_version, nvrtc, cc = os.environ.get("TOOLCHAIN", "cuda,14.2.0,13.0,90").split(",")
toolchain = (platform, cupy_version, tuple(int(v) for v in nvrtc.split(".")), cc)
nvdisasm = os.environ.get("NVDISASM", "/tmp/nvd/nvidia/cu13/bin/nvdisasm")
if not os.access(nvdisasm, os.X_OK):
    sys.exit(f"no nvdisasm at {nvdisasm} (see this script's docstring)")
archive = tarfile.open(pathlib.Path(__file__).resolve().parent.parent / ".cache-kernels" / "kernels.tar.gz")
members = {pathlib.Path(m.name).name: m for m in archive.getmembers()}

groups = []
if stem == "q8_gemv":
    groups.append(tuple(sorted(set(production_gemv_names(True, GEMV_MMA_MIN_ROWS)))))
groups.append((instance,))
for group in groups:
    name = kernel_cache_name(stem, COMPILE_OPTIONS[platform], group, toolchain)
    if f"{name}.bin" in members and (len(group) == 1 or instance in group):
        break
else:
    sys.exit(f"no cached module of kernels_raw/{stem}.hip holds {instance} (toolchain {toolchain})")

binary = archive.extractfile(members[f"{name}.bin"]).read()
mapping = json.load(io.TextIOWrapper(archive.extractfile(members[f"{name}.json"])))
mangled = mapping.get(instance, instance)
out_dir.mkdir(parents=True, exist_ok=True)
cubin = out_dir / f"{name}.cubin"
cubin.write_bytes(binary + b"\0")
sass = subprocess.run([nvdisasm, "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
sections = re.split(r"(?m)^\s*\.section\s+\.text\.", sass)
body = next((s for s in sections if s.startswith(mangled + ",")), None)
if body is None:
    sys.exit(f"{instance} ({mangled}) is not in {name}")
target = out_dir / (re.sub(r"[^\w]+", "_", instance).strip("_") + ".sass")
target.write_text(body)
lines = body.splitlines()
print(f"{instance}: {name}.bin, {len(lines)} lines, {sum('LDG' in ln for ln in lines)} LDG, "
      f"{sum('IDP' in ln for ln in lines)} IDP -> {target}")
