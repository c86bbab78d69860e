"""What a run runs on: the first line every program prints, and one warning line when an NVIDIA
GPU or a TPU is visible but JAX runs on the CPU (the CPU-only jaxlib of ``make venv``).

  jax 0.12.0 on cpu: 1 device (cpu), 1 process
  jax 0.12.0 on gpu: 8 devices (NVIDIA H100 80GB HBM3), process 0 of 2 (16 devices in all)
  warning: an NVIDIA GPU is visible (/dev/nvidia0) but JAX runs on the CPU: install JAX's CUDA
  plugin with `make clean venv ACCEL=cuda12` (CUDA 12 driver) or `make clean venv ACCEL=cuda13`
  (CUDA 13 driver), README.md "On a GPU or TPU"

What is visible is read from the operating system, not from JAX (which sees only what its
installed plugins drive): an NVIDIA GPU by its device files (/dev/nvidia0, /dev/nvidiactl under
Docker, /dev/dxg under WSL2), a TPU by a PCI device of Google's vendor id 0x1ae0 with a TPU device
id (v3 to v6e, TPU7x), the facts JAX's own start-up uses. ``INSTALL_COMMANDS`` are the commands
the README prints (tests/test_install.py holds the two together).
"""
from __future__ import annotations

import glob
import os
from typing import Dict, List, Optional, Sequence

import jax

NVIDIA_DEVICE_FILES = ("dev/nvidia0", "dev/nvidiactl", "dev/dxg")
GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_PCI_DEVICES = {"0x0027": "v3", "0x005e": "v4", "0x0062": "v5p", "0x0063": "v5e",
                   "0x006f": "v6e", "0x0076": "TPU7x"}
INSTALL_COMMANDS: Dict[str, Sequence[str]] = {
    "gpu": ("make clean venv ACCEL=cuda12", "make clean venv ACCEL=cuda13"),
    "tpu": ("make clean venv ACCEL=tpu",),
}


def visible_accelerators(root: str = "/") -> Dict[str, str]:
  """{'gpu' | 'tpu': what shows it} for the accelerators the operating system under ``root``
  shows, e.g. {'gpu': '/dev/nvidia0'} or {'tpu': '4 TPU v5e chips'}; {} on a plain CPU host."""
  found = {}
  gpu = [f for f in NVIDIA_DEVICE_FILES if os.path.exists(os.path.join(root, f))]
  if gpu:
    found["gpu"] = "/" + gpu[0]
  chips = []
  for vendor in sorted(glob.glob(os.path.join(root, "sys/bus/pci/devices/*/vendor"))):
    device = os.path.join(os.path.dirname(vendor), "device")
    if _read(vendor) == GOOGLE_PCI_VENDOR and os.path.exists(device):
      chips += [TPU_PCI_DEVICES[d] for d in [_read(device)] if d in TPU_PCI_DEVICES]
  if chips:
    found["tpu"] = f"{len(chips)} TPU {chips[0]} chip{'s' if len(chips) > 1 else ''}"
  return found


def _read(path: str) -> str:
  with open(path) as f:
    return f.read().strip()


def cpu_fallback_warning(platform: str, visible: Dict[str, str]) -> Optional[str]:
  """One warning line when ``visible`` (``visible_accelerators``) holds a GPU or TPU and JAX's
  ``platform`` is 'cpu', naming the install command that fixes it; None otherwise."""
  if platform != "cpu" or not visible:
    return None
  kind = "gpu" if "gpu" in visible else "tpu"
  what = {"gpu": "an NVIDIA GPU", "tpu": "a TPU"}[kind]
  cmds = INSTALL_COMMANDS[kind]
  fix = (f"install JAX's CUDA plugin with `{cmds[0]}` (CUDA 12 driver) or `{cmds[1]}` (CUDA 13 "
         f"driver)" if kind == "gpu" else f"install libtpu with `{cmds[0]}`")
  return (f"warning: {what} is visible ({visible[kind]}) but JAX runs on the CPU: {fix}, "
          f"README.md \"On a GPU or TPU\"")


def platform_line(jax_version: str, platform: str, kinds: Sequence[str], local: int,
                  total: int, process: int, processes: int) -> str:
  """'jax 0.12.0 on gpu: 8 devices (NVIDIA H100 80GB HBM3), process 0 of 2 (16 devices in all)'."""
  names = ", ".join(dict.fromkeys(kinds))
  line = f"jax {jax_version} on {platform}: {local} device{'s' if local != 1 else ''} ({names})"
  if processes == 1:
    return line + ", 1 process"
  return line + f", process {process} of {processes} ({total} devices in all)"


def describe() -> List[str]:
  """The platform line of this process and, where it applies, the CPU-fallback warning."""
  # Called after jax.distributed is up: jax.local_devices() starts the backend.
  devices = jax.local_devices()
  platform = devices[0].platform
  lines = [platform_line(jax.__version__, platform, [d.device_kind for d in devices],
                         len(devices), jax.device_count(), jax.process_index(),
                         jax.process_count())]
  warning = cpu_fallback_warning(platform, visible_accelerators())
  return lines + ([warning] if warning else [])


def announce() -> None:
  """Prints ``describe()``'s lines (every process: each host has its own devices)."""
  for line in describe():
    print(line, flush=True)
