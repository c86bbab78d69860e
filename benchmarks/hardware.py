"""The nominal dense peak FLOP/s of a device, for model FLOPs utilisation (MFU) against it.

MFU = (FLOPs of one train step) x (steps/s) / (nominal peak of the device for the compute dtype)
(Chowdhery et al. 2022, "PaLM", App. B, with the step's FLOPs from XLA's cost analysis instead of
the 6 N D formula). The peak is the vendor's dense number (no 2:4 sparsity), not a measured one.

Accelerators (``ACCELERATORS``): a table keyed by the ``device_kind`` JAX reports, with the
dense bfloat16, TensorFloat-32 and plain FP32 rates and the datasheet each comes from. Which one
a float32 step is compared with follows JAX's default matmul precision (docs.jax.dev, "Matmul
precision"): TF32 tensor cores on NVIDIA Ampere and newer, one bfloat16 pass on the TPU MXU,
plain FP32 on older GPUs; with ``jax_default_matmul_precision`` set to 'highest' / 'float32'
plain FP32 (TPU: no single nominal number, None).

CPU (``cpu_peak``): cores x FMA units x fp32 lanes x 2 FLOP per FMA x clock, from /proc/cpuinfo,
the CPUs this process may run on (``os.sched_getaffinity``) and cpufreq; the assumptions are in
``cpu_peak``'s docstring. An unknown device gives ``Peak(flops=None, reason=...)``.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

T = 1e12
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class AcceleratorSpec:
  """Nominal dense peaks of one accelerator (FLOP/s, one JAX device).

  bf16: bfloat16 matmul peak (tensor cores / MXU; dense). tf32: TF32 tensor-core peak (None
  where absent). fp32: plain FP32 (CUDA cores; None on TPU, which has no FP32 matrix unit).
  float32_default: what a float32 matmul at JAX's default precision runs at: 'tf32', 'fp32' or
  'bf16' (TPU: one bfloat16 pass). uncertain: the number is not from a datasheet of this exact
  part (see note).
  """
  name: str
  bf16: float
  tf32: Optional[float]
  fp32: Optional[float]
  float32_default: str
  source: str
  note: str = ""
  uncertain: bool = False


def _nvidia(name, bf16, tf32, fp32, source, note="", uncertain=False) -> AcceleratorSpec:
  return AcceleratorSpec(name, bf16 * T, None if tf32 is None else tf32 * T, fp32 * T,
                         "tf32" if tf32 is not None else "fp32", source, note, uncertain)


def _tpu(name, bf16, source, note="") -> AcceleratorSpec:
  return AcceleratorSpec(name, bf16 * T, None, None, "bf16", source,
                         note or "float32 at the default precision: one bf16 MXU pass")


_HALF = "datasheet lists the sparse rate; dense = half of it"
_NO_BF16 = ("no bfloat16 tensor cores: bfloat16 is taken to run at the FP32 rate (an upper "
            "bound; XLA may emulate it more slowly)")
# (lower-case words that must all occur in device_kind, spec), most specific first.
ACCELERATORS: List[Tuple[Tuple[str, ...], AcceleratorSpec]] = [
    (("h200", "nvl"), _nvidia("NVIDIA H200 NVL", 835.5, 417.5, 60.0,
                              "NVIDIA H200 datasheet (2024), H200 NVL column", _HALF)),
    (("h200",), _nvidia("NVIDIA H200 SXM", 989.5, 494.5, 67.0,
                        "NVIDIA H200 datasheet (2024), H200 SXM column", _HALF)),
    (("h100", "nvl"), _nvidia("NVIDIA H100 NVL", 835.5, 417.5, 60.0,
                              "NVIDIA H100 datasheet, H100 NVL column", _HALF)),
    (("h100", "pcie"), _nvidia("NVIDIA H100 PCIe", 756.5, 378.0, 51.0,
                               "NVIDIA H100 datasheet, H100 PCIe column", _HALF)),
    (("h100",), _nvidia("NVIDIA H100 SXM", 989.5, 494.5, 67.0,
                        "NVIDIA H100 datasheet, H100 SXM column ('H100 80GB HBM3')", _HALF)),
    (("a100",), _nvidia("NVIDIA A100 (40/80 GB, SXM4/PCIe)", 312.0, 156.0, 19.5,
                        "NVIDIA A100 datasheet (same peak for all four parts; the PCIe parts "
                        "sustain less at their lower power)")),
    (("l40s",), _nvidia("NVIDIA L40S", 362.05, 183.0, 91.6,
                        "NVIDIA L40S datasheet (dense column; sparse 733 / 366)")),
    (("l40",), _nvidia("NVIDIA L40", 181.05, 90.5, 90.5, "NVIDIA L40 datasheet (dense column)",
                       uncertain=True)),
    (("l4",), _nvidia("NVIDIA L4", 121.0, 60.0, 30.3, "NVIDIA L4 datasheet", _HALF)),
    (("a10g",), _nvidia("NVIDIA A10G", 125.0, 62.5, 31.2,
                        "NVIDIA A10 datasheet (no public datasheet of AWS's A10G)",
                        "A10G clocks and SM count differ from the A10", uncertain=True)),
    (("a10",), _nvidia("NVIDIA A10", 125.0, 62.5, 31.2, "NVIDIA A10 datasheet")),
    (("v100s",), _nvidia("NVIDIA V100S PCIe", 16.4, None, 16.4, "NVIDIA V100S datasheet",
                         _NO_BF16)),
    (("v100", "sxm2"), _nvidia("NVIDIA V100 SXM2", 15.7, None, 15.7,
                              "NVIDIA V100 datasheet, SXM2 column", _NO_BF16)),
    (("v100",), _nvidia("NVIDIA V100 PCIe", 14.0, None, 14.0,
                        "NVIDIA V100 datasheet, PCIe column", _NO_BF16)),
    (("t4",), _nvidia("NVIDIA T4", 8.1, None, 8.1, "NVIDIA T4 datasheet", _NO_BF16)),
    (("rtx 4090",), _nvidia("NVIDIA GeForce RTX 4090", 165.2, 82.6, 82.6,
                            "NVIDIA Ada Lovelace architecture whitepaper, App. A (bf16 with "
                            "fp32 accumulate, dense)")),
    (("tpu v6 lite",), _tpu("TPU v6e (Trillium)", 918.0, "Google Cloud TPU v6e docs (per chip)")),
    (("tpu v6e",), _tpu("TPU v6e (Trillium)", 918.0, "Google Cloud TPU v6e docs (per chip)")),
    (("tpu v5 lite",), _tpu("TPU v5e", 197.0, "Google Cloud TPU v5e docs (per chip)")),
    (("tpu v5e",), _tpu("TPU v5e", 197.0, "Google Cloud TPU v5e docs (per chip)")),
    (("tpu v5p",), _tpu("TPU v5p", 459.0, "Google Cloud TPU v5p docs (per chip)")),
    (("tpu v5",), _tpu("TPU v5p", 459.0, "Google Cloud TPU v5p docs (per chip)")),
    (("tpu v4",), _tpu("TPU v4", 275.0, "Google Cloud TPU v4 docs (per chip, megacore)")),
]


@dataclasses.dataclass(frozen=True)
class Peak:
  """A nominal peak: ``flops`` FLOP/s (None: unknown, ``reason`` says why) for ``dtype``, the
  arithmetic behind it (``formula``) and where its numbers come from (``source``)."""
  flops: Optional[float]
  dtype: str
  formula: str
  source: str
  reason: str = ""

  def describe(self) -> str:
    """One line for a report header."""
    if self.flops is None:
      return f"unknown peak ({self.reason})"
    return f"{self.flops / T:.3f} TFLOP/s {self.dtype}: {self.formula} [{self.source}]"


def _check_dtype(dtype: str) -> str:
  dtype = str(dtype)
  if dtype not in DTYPES:
    raise ValueError(f"unknown compute dtype {dtype!r}; accepted: {DTYPES}")
  return dtype


def lookup(device_kind: str) -> Optional[AcceleratorSpec]:
  """The first table entry whose keys all occur in ``device_kind`` as whole words
  (case-insensitive; 'l4' does not match 'L40S'), else None."""
  kind = device_kind.lower()
  for keys, spec in ACCELERATORS:
    if all(re.search(rf"(?<![a-z0-9]){re.escape(k)}(?![a-z0-9])", kind) for k in keys):
      return spec
  return None


def accelerator_peak(device_kind: str, dtype: str, precision: Optional[str] = None) -> Peak:
  """Nominal dense peak of ``device_kind`` for a ``dtype`` ('float32' / 'bfloat16') train step.

  precision: ``jax_default_matmul_precision`` (None / 'default' / 'fastest' / 'bfloat16' /
  'tensorfloat32': the fast default; 'highest' / 'float32': plain FP32 for float32 steps).
  """
  dtype = _check_dtype(dtype)
  spec = lookup(device_kind)
  if spec is None:
    return Peak(None, dtype, "", "", f"{device_kind!r} is not in benchmarks/hardware.py's table")
  src = spec.source + (f"; {spec.note}" if spec.note else "") + (
      "; UNCERTAIN" if spec.uncertain else "")
  if dtype == "bfloat16":
    return Peak(spec.bf16, dtype, f"{spec.name} dense bf16", src)
  full = str(precision).lower() in ("highest", "float32", "f32_f32_f32")
  if full:
    if spec.fp32 is None:
      return Peak(None, dtype, "", src, f"{spec.name}: float32 at precision {precision!r} is "
                  f"several bf16 passes; no single nominal number")
    return Peak(spec.fp32, dtype, f"{spec.name} plain FP32 (precision {precision!r})", src)
  kind = spec.float32_default
  flops = {"tf32": spec.tf32, "fp32": spec.fp32, "bf16": spec.bf16}[kind]
  what = {"tf32": "dense TF32 tensor cores (JAX's default float32 matmul precision)",
          "fp32": "plain FP32", "bf16": "one bf16 MXU pass (JAX's default float32 precision)"}
  return Peak(flops, dtype, f"{spec.name} {what[kind]}", src)


# -- CPU ------------------------------------------------------------------------------------------


def parse_cpuinfo(text: str) -> List[Dict[str, str]]:
  """/proc/cpuinfo as one {field: value} dict per logical processor."""
  procs, cur = [], {}
  for line in text.splitlines():
    if not line.strip():
      if cur:
        procs.append(cur)
      cur = {}
      continue
    if ":" in line:
      k, v = line.split(":", 1)
      cur[k.strip()] = v.strip()
  if cur:
    procs.append(cur)
  return procs


def _max_field(procs: Sequence[Dict[str, str]], field: str) -> Optional[float]:
  vals = [float(p[field]) for p in procs if field in p]
  return max(vals) if vals else None


def cpu_peak(cpuinfo: str, available: Optional[Iterable[int]] = None, dtype: str = "float32",
             max_freq_khz: Optional[float] = None) -> Peak:
  """Nominal peak of the CPUs ``available`` (logical ids; None: all) described by ``cpuinfo``.

  peak = cores x FMA units x fp32 lanes x 2 FLOP/FMA x clock (x 2 for bf16 with avx512_bf16).
  cores: physical cores among the available logical CPUs (distinct (physical id, core id));
    hyper-threads share a core's FMA units. Without topology fields each logical CPU counts.
  lanes / units: avx512f -> 16 fp32 lanes, avx2 + fma -> 8, else SSE: 4 lanes, one add and one
    mul port (written as 1 unit x 4 lanes x 2). 2 FMA units per core with AVX2 / AVX-512
    (server parts since Haswell / Skylake-SP Gold-Platinum, AMD Zen 2-5; some Xeon Silver /
    Bronze have one 512-bit unit: this then overstates by 2x). AMD Zen 4 (family 25 with
    avx512f) runs 512-bit instructions as two 256-bit halves on its two 256-bit FMA pipes: 8
    lanes per unit, i.e. 16 fp32 FLOP/cycle per unit, the AVX2 rate; Zen 5 (family 26) has
    full 512-bit pipes.
  clock: cpufreq's cpuinfo_max_freq when given (the highest, turbo, clock: a true upper bound),
    else the largest 'cpu MHz' of the available CPUs (in a VM: the host's nominal clock; on
    bare metal it may be a throttled current clock), else bogomips / 2 (x86: the TSC rate).
    Sustained all-core AVX clocks are lower: MFU against this peak is conservative.
  bfloat16: the fp32 rate, except avx512_bf16 (VDPBF16PS: two bf16 products per fp32 lane,
    2x) and amx_bf16 (Intel AMX: 1024 bf16 FLOP/cycle/core). XLA:CPU may use neither: the
    measured bf16 matmul beside it tells.
  """
  dtype = _check_dtype(dtype)
  procs = parse_cpuinfo(cpuinfo)
  if not procs:
    return Peak(None, dtype, "", "/proc/cpuinfo", "no processors in /proc/cpuinfo")
  if available is not None:
    avail = set(int(a) for a in available)
    procs = [p for p in procs if int(p.get("processor", -1)) in avail] or procs[:len(avail)]
  if all("core id" in p for p in procs):
    cores = len({(p.get("physical id", "0"), p["core id"]) for p in procs})
    core_src = f"{cores} physical core(s) of {len(procs)} available logical CPU(s)"
  else:
    cores = len(procs)
    core_src = f"{cores} logical CPU(s) (no core topology in /proc/cpuinfo)"
  flags = set(procs[0].get("flags", "").split())
  vendor = procs[0].get("vendor_id", "")
  family = int(procs[0].get("cpu family", "0") or 0)
  if "avx512f" in flags:
    zen4 = vendor == "AuthenticAMD" and family <= 25
    units, lanes, isa = 2, (8 if zen4 else 16), ("avx512f (Zen 4: 2x256-bit)" if zen4
                                                   else "avx512f")
  elif "avx2" in flags and "fma" in flags:
    units, lanes, isa = 2, 8, "avx2+fma"
  else:
    units, lanes, isa = 1, 4, "sse (add + mul, no fma)"
  if max_freq_khz:
    ghz, clock_src = max_freq_khz / 1e6, "cpufreq cpuinfo_max_freq"
  elif _max_field(procs, "cpu MHz"):
    ghz, clock_src = _max_field(procs, "cpu MHz") / 1e3, "'cpu MHz'"
  elif _max_field(procs, "bogomips"):
    ghz, clock_src = _max_field(procs, "bogomips") / 2e3, "bogomips / 2"
  else:
    return Peak(None, dtype, "", "/proc/cpuinfo", "no clock in /proc/cpuinfo or cpufreq")
  per_cycle = units * lanes * 2
  formula = (f"{cores} cores x {units} FMA units x {lanes} fp32 lanes x 2 FLOP/FMA x "
             f"{ghz:.3f} GHz")
  mult = 1.0
  if dtype == "bfloat16":
    if "amx_bf16" in flags:
      per_cycle, isa = 1024, isa + ", amx_bf16"
      formula = f"{cores} cores x 1024 bf16 FLOP/cycle (AMX) x {ghz:.3f} GHz"
    elif "avx512_bf16" in flags:
      mult, isa = 2.0, isa + ", avx512_bf16"
      formula += " x 2 (avx512_bf16: 2 bf16 products per fp32 lane)"
    else:
      formula += " (bf16 at the fp32 rate)"
  flops = cores * per_cycle * ghz * 1e9 * mult
  source = f"/proc/cpuinfo: {core_src}, {isa}, clock from {clock_src}"
  return Peak(flops, dtype, formula, source)


def _read(path: str) -> Optional[str]:
  try:
    with open(path) as f:
      return f.read()
  except OSError:
    return None


def host_cpu_peak(dtype: str = "float32") -> Peak:
  """``cpu_peak`` of this machine: /proc/cpuinfo, the process's CPU affinity, cpufreq."""
  text = _read("/proc/cpuinfo")
  if text is None:
    return Peak(None, _check_dtype(dtype), "", "", "no /proc/cpuinfo (not Linux)")
  avail = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
  freqs = [_read(f"/sys/devices/system/cpu/cpu{c}/cpufreq/cpuinfo_max_freq")
           for c in (avail or [0])]
  freqs = [float(f) for f in freqs if f and f.strip()]
  return cpu_peak(text, avail, dtype, max(freqs) if freqs else None)


def nominal_peak(dtype: str, device=None) -> Peak:
  """The nominal peak of ``device`` (default: JAX's device 0) for a ``dtype`` compute step."""
  import jax
  dtype = _check_dtype(dtype)
  dev = device if device is not None else jax.devices()[0]
  if dev.platform == "cpu":
    return host_cpu_peak(dtype)
  return accelerator_peak(dev.device_kind, dtype, jax.config.jax_default_matmul_precision)


# -- the machine line of every results table --------------------------------------------------

MACHINE_PREFIX = "Machine: "


def cpu_model(cpuinfo: Optional[str]) -> str:
  """The CPU's model name from /proc/cpuinfo text ('model name'; ARM: 'Hardware' / 'CPU part'),
  else platform.processor(), else 'unknown CPU'."""
  import platform
  procs = parse_cpuinfo(cpuinfo or "")
  for field in ("model name", "Hardware", "Processor", "cpu model"):
    for p in procs:
      if p.get(field):
        return " ".join(p[field].split())
  if procs and procs[0].get("CPU part"):
    return f"{procs[0].get('CPU implementer', '?')} CPU part {procs[0]['CPU part']}"
  return platform.processor() or "unknown CPU"


# The widest vector / matrix extensions, named in the machine line (a VM's model name may be
# only 'AMD EPYC'): the first present of each group.
_ISA_GROUPS = (("amx_bf16",), ("avx512_bf16",), ("avx512f", "avx2"), ("sve2", "sve", "asimd"))


def cpu_description(cpuinfo: Optional[str]) -> str:
  """'<model name> (<vendor> family F model M; avx512f, avx512_bf16)': the model name and, where
  /proc/cpuinfo has them, the x86 family / model and the widest vector / matrix extensions."""
  procs = parse_cpuinfo(cpuinfo or "")
  out = cpu_model(cpuinfo)
  if not procs:
    return out
  p = procs[0]
  ident = []
  if p.get("cpu family"):
    ident.append(" ".join(x for x in (p.get("vendor_id", ""), f"family {p['cpu family']}",
                                      f"model {p['model']}" if p.get("model") else "") if x))
  flags = set((p.get("flags") or p.get("Features") or "").split())
  isa = [next(f for f in g if f in flags) for g in _ISA_GROUPS if any(f in flags for f in g)]
  if isa:
    ident.append(", ".join(isa))
  return f"{out} ({'; '.join(ident)})" if ident else out


def machine_line(cpuinfo: Optional[str] = None, available: Optional[int] = None,
                 logical: Optional[int] = None, devices: Optional[Sequence[Any]] = None) -> str:
  """'Machine: <CPU>, <n> cores available (of <m> logical CPUs); JAX devices: ...' for the
  results tables: timings and ratios (e.g. against PyTorch) depend on the machine. <CPU> is
  ``cpu_description`` (model name, family / model, widest vector units).

  Defaults: this host's /proc/cpuinfo, the CPUs this process may run on
  (os.sched_getaffinity), os.cpu_count(), jax.devices() (their device_kind: the GPU / TPU model
  on an accelerator)."""
  if cpuinfo is None:
    cpuinfo = _read("/proc/cpuinfo")
  if logical is None:
    logical = os.cpu_count()
  if available is None:
    available = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else logical)
  line = f"{MACHINE_PREFIX}{cpu_description(cpuinfo)}, {available} cores available"
  if logical and logical != available:
    line += f" (of {logical} logical CPUs)"
  if devices is None:
    try:
      import jax
      devices = jax.devices()
    except Exception:  # noqa: BLE001 -- the line names the CPU regardless
      devices = []
  if devices:
    kinds: Dict[str, int] = {}
    for d in devices:
      name = f"{d.device_kind} ({d.platform})" if d.platform != "cpu" else "cpu"
      kinds[name] = kinds.get(name, 0) + 1
    line += "; JAX devices: " + ", ".join(f"{n} x {k}" for k, n in kinds.items())
  return line + "."


def with_machine_line(md: str, line: Optional[str] = None) -> str:
  """``md`` (a results table in markdown) ending with the machine line (``machine_line()``
  unless given); unchanged when it already has one."""
  if any(l.startswith(MACHINE_PREFIX) for l in md.splitlines()):
    return md
  return md.rstrip("\n") + "\n\n" + (line or machine_line()) + "\n"


def mfu(flops_per_step: float, steps_per_s: float, peak: Peak) -> Optional[float]:
  """Model FLOPs utilisation: flops_per_step x steps_per_s / peak (None if the peak is
  unknown)."""
  if peak.flops is None or not peak.flops > 0:
    return None
  return flops_per_step * steps_per_s / peak.flops


def table_markdown() -> str:
  """The accelerator table as markdown (for docs/performance.md)."""
  lines = ["| device_kind contains | device | bf16 dense | TF32 dense | FP32 | float32 "
           "default | source |", "|---|---|---:|---:|---:|---|---|"]
  for keys, s in ACCELERATORS:
    f = lambda v: "-" if v is None else f"{v / T:g}"  # noqa: E731
    lines.append(f"| {' + '.join(repr(k) for k in keys)} | {s.name} | {f(s.bf16)} | "
                 f"{f(s.tf32)} | {f(s.fp32)} | {s.float32_default} | {s.source}"
                 f"{'; ' + s.note if s.note else ''}{'; UNCERTAIN' if s.uncertain else ''} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  for dt in DTYPES:
    print(nominal_peak(dt).describe())
