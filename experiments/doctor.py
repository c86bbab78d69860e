"""``python -m experiments.doctor`` (``make doctor``): what this installation runs on, in one
screen, before a long run.

Prints the Python and package versions (with JAX's accelerator plugins), the ACCEL the venv was
made for (``make venv ACCEL=...``), the devices with their memory, the host's memory, the
compilation cache (``experiments.compile_cache``: where, files, size), and two checks run on the
default device: a bfloat16 matmul (native on TPU and on NVIDIA GPUs of compute capability >= 8.0,
emulated on the CPU) and the fused cuDNN attention DiT uses on a GPU
(``jax.nn.dot_product_attention(implementation='cudnn')``; elsewhere XLA's attention). Exits 1
when an NVIDIA GPU or a TPU is visible but JAX runs on the CPU (``experiments.runtime``), 0
otherwise.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform as _platform
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from experiments import compile_cache, runtime

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml_dtypes", "diffrax",
            "chex", "tensorflow-datasets", "jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu")


def versions(packages: Sequence[str] = PACKAGES) -> Dict[str, Optional[str]]:
  """{package: installed version or None}."""
  out = {}
  for p in packages:
    try:
      out[p] = importlib.metadata.version(p)
    except importlib.metadata.PackageNotFoundError:
      out[p] = None
  return out


def venv_accel(prefix: str = sys.prefix) -> Optional[str]:
  """The ACCEL `make venv` recorded in <venv>/.accel; None outside such a venv."""
  path = os.path.join(prefix, ".accel")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return f.read().strip()


def host_memory(meminfo: str = "/proc/meminfo") -> Optional[Tuple[int, int]]:
  """(total, available) bytes of the host from /proc/meminfo; None where it is absent."""
  if not os.path.exists(meminfo):
    return None
  fields = {}
  with open(meminfo) as f:
    for line in f:
      name, value = line.split(":", 1)
      fields[name] = int(value.split()[0]) * 1024
  return fields["MemTotal"], fields.get("MemAvailable", fields["MemFree"])


def cache_summary(path: Optional[str]) -> str:
  """'<path>: N files, X MiB' (or that it is off / not yet created)."""
  if path is None:
    return "off"
  if not os.path.isdir(path):
    return f"{path} (not created yet: the first compiled program creates it)"
  sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs]
  return f"{path}: {len(sizes)} files, {sum(sizes) / 2**20:.1f} MiB"


def gib(n: Optional[int]) -> str:
  return "unknown" if n is None else f"{n / 2**30:.1f} GiB"


def bf16_check(device) -> str:
  """A (256, 256) bfloat16 matmul on ``device`` against float32: how bf16 runs there."""
  a = jax.random.normal(jax.random.PRNGKey(0), (256, 256), jnp.float32)
  a = jax.device_put(a, device)
  ref = a @ a
  got = (a.astype(jnp.bfloat16) @ a.astype(jnp.bfloat16)).astype(jnp.float32)
  err = float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref)))
  if device.platform == "tpu":
    how = "native (MXU)"
  elif device.platform == "gpu":
    cc = getattr(device, "compute_capability", None)
    how = (f"native (compute capability {cc})" if cc and float(cc) >= 8.0 else
           f"compute capability {cc}: no bf16 tensor cores, slower than float32")
  else:
    how = "emulated on the CPU (runs; slower than float32: use it on a GPU / TPU)"
  return f"{how}; a 256x256 matmul's largest error relative to float32 {err:.1e}"


def fused_attention_check(device) -> str:
  """Whether the fused cuDNN attention runs on ``device`` (GPU only), with the reason if not."""
  if device.platform != "gpu":
    return (f"not on {device.platform}: DiT uses XLA's attention "
            f"(jax.nn.dot_product_attention, implementation=None)")
  q = jax.device_put(jnp.ones((2, 64, 4, 64), jnp.bfloat16), device)
  try:
    jax.block_until_ready(jax.nn.dot_product_attention(q, q, q, implementation="cudnn"))
  except (RuntimeError, ValueError, NotImplementedError) as e:  # reported, not hidden
    return f"not available ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
  return "available (cuDNN): DiT's attention runs fused"


def report(cache_dir: Optional[str]) -> Tuple[List[str], bool]:
  """The lines to print and whether an accelerator goes unused (the exit status)."""
  lines = [f"python {_platform.python_version()} ({sys.executable}) on {_platform.system()} "
           f"{_platform.machine()}, {os.cpu_count()} CPUs"]
  v = versions()
  lines.append("packages: " + ", ".join(f"{p} {v[p]}" for p in PACKAGES if v[p]))
  missing = [p for p in PACKAGES if not v[p]]
  lines.append("not installed: " + ", ".join(missing))
  accel = venv_accel()
  lines.append(f"venv made for: ACCEL={accel}" if accel else
               f"venv: {sys.prefix} was not made by `make venv` (no .accel file)")
  described = runtime.describe()
  lines.append(described[0])
  for d in jax.local_devices():
    memory = ("the host's" if d.platform == "cpu" else
              gib((d.memory_stats() or {}).get("bytes_limit")))
    lines.append(f"  device {d.id}: {d.device_kind} ({d.platform}), memory {memory}")
  mem = host_memory()
  lines.append("host memory: " + (f"{gib(mem[0])} total, {gib(mem[1])} available" if mem else
                                  "unknown"))
  lines.append(f"compilation cache: {cache_summary(cache_dir)}")
  dev = jax.local_devices()[0]
  lines.append(f"bfloat16: {bf16_check(dev)}")
  lines.append(f"fused attention: {fused_attention_check(dev)}")
  lines += described[1:]
  return lines, len(described) > 1


def main(argv: Sequence[str] = ()) -> int:
  cache_dir = compile_cache.resolve(None)
  lines, unused = report(cache_dir)
  print("\n".join(lines), flush=True)
  return 1 if unused else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
