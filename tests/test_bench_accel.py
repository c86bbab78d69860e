"""The nominal peak table and CPU formula (benchmarks/hardware.py), MFU cells, and the plumbing
of benchmarks/bench_accel.py (its quick mode end to end is slow-marked)."""
import json
import os
import subprocess
import sys

import jax
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import bench_accel  # noqa: E402
import cifar_throughput  # noqa: E402
import hardware  # noqa: E402
import train_throughput  # noqa: E402

T = 1e12


@pytest.mark.parametrize("kind, bf16, f32", [
    ("NVIDIA H200", 989.5 * T, 494.5 * T),  # float32: dense TF32
    ("NVIDIA H100 80GB HBM3", 989.5 * T, 494.5 * T),
    ("NVIDIA H100 PCIe", 756.5 * T, 378.0 * T),
    ("NVIDIA A100-SXM4-40GB", 312 * T, 156 * T),
    ("NVIDIA A100 80GB PCIe", 312 * T, 156 * T),
    ("NVIDIA L4", 121 * T, 60 * T),
    ("NVIDIA L40S", 362.05 * T, 183 * T),  # not taken for the L4 ('l4' is a whole word)
    ("Tesla V100-SXM2-16GB", 15.7 * T, 15.7 * T),  # no TF32 / bf16 units: plain FP32
    ("Tesla T4", 8.1 * T, 8.1 * T),
    ("NVIDIA GeForce RTX 4090", 165.2 * T, 82.6 * T),
    ("TPU v4", 275 * T, 275 * T),  # float32 at the default precision: one bf16 pass
    ("TPU v5 lite", 197 * T, 197 * T),
    ("TPU v5", 459 * T, 459 * T),
    ("TPU v6 lite", 918 * T, 918 * T),
])
def test_table_lookup(kind, bf16, f32):
  assert hardware.accelerator_peak(kind, "bfloat16").flops == pytest.approx(bf16)
  assert hardware.accelerator_peak(kind, "float32").flops == pytest.approx(f32)


def test_full_float32_precision_uses_plain_fp32_and_tpu_has_none():
  assert hardware.accelerator_peak("NVIDIA A100-SXM4-80GB", "float32",
                                   "highest").flops == pytest.approx(19.5 * T)
  p = hardware.accelerator_peak("TPU v4", "float32", "highest")
  assert p.flops is None and "bf16 passes" in p.reason


def test_unknown_kind_is_none_with_reason():
  p = hardware.accelerator_peak("Imaginary XPU 9000", "float32")
  assert p.flops is None and "Imaginary XPU 9000" in p.reason
  assert p.describe().startswith("unknown peak")
  assert hardware.mfu(1e12, 1.0, p) is None
  row = dict(tflops=1.0, gflop_per_step=1000.0, steps_per_s=1.0, dtype="float32")
  assert train_throughput.utilisation(row, {"float32": p}, {"float32": 2e12}) == (
      "unknown peak", "50.0%")


def test_bad_dtype_is_refused():
  with pytest.raises(ValueError, match="float16"):
    hardware.accelerator_peak("TPU v4", "float16")
  with pytest.raises(ValueError, match="float16"):
    hardware.cpu_peak(_cpuinfo(2, "GenuineIntel", 6, "fma avx2 avx512f"), dtype="float16")


def _cpuinfo(n, vendor, family, flags, mhz="2600.000", cores=None, extra=""):
  """Fake /proc/cpuinfo: n logical CPUs on ``cores`` physical cores (default n)."""
  cores = cores or n
  blocks = []
  for i in range(n):
    blocks.append(f"processor\t: {i}\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
                  f"physical id\t: 0\ncore id\t\t: {i % cores}\n"
                  + (f"cpu MHz\t\t: {mhz}\n" if mhz else "") + extra
                  + f"flags\t\t: fpu sse sse2 {flags}\n")
  return "\n".join(blocks) + "\n"


def test_cpu_formula_by_hand():
  # 2 cores x 2 FMA units x 16 fp32 lanes (avx512f) x 2 FLOP/FMA x 2.6 GHz = 332.8 GFLOP/s.
  intel = _cpuinfo(2, "GenuineIntel", 6, "fma avx2 avx512f")
  p = hardware.cpu_peak(intel)
  assert p.flops == pytest.approx(332.8e9)
  assert "2 cores x 2 FMA units x 16 fp32 lanes" in p.formula and "'cpu MHz'" in p.source
  assert hardware.cpu_peak(intel, dtype="bfloat16").flops == pytest.approx(332.8e9)
  # AMD Zen 4 (family 25): 512-bit ops as 2 x 256 bits: 8 lanes per unit, half the rate;
  # avx512_bf16 doubles the bf16 rate.
  zen4 = _cpuinfo(2, "AuthenticAMD", 25, "fma avx2 avx512f avx512_bf16")
  assert hardware.cpu_peak(zen4).flops == pytest.approx(166.4e9)
  assert hardware.cpu_peak(zen4, dtype="bfloat16").flops == pytest.approx(332.8e9)
  # AVX2 + FMA: 8 lanes; no FMA: one 4-wide add + one 4-wide mul per cycle.
  assert hardware.cpu_peak(_cpuinfo(2, "GenuineIntel", 6, "fma avx2")).flops == pytest.approx(
      2 * 2 * 8 * 2 * 2.6e9)
  assert hardware.cpu_peak(_cpuinfo(2, "GenuineIntel", 6, "sse4_2")).flops == pytest.approx(
      2 * 1 * 4 * 2 * 2.6e9)


def test_cpu_cores_clock_and_amx():
  # 4 hyper-threads on 2 cores: 2 cores; the affinity {0} (one thread of core 0): 1 core.
  ht = _cpuinfo(4, "GenuineIntel", 6, "fma avx2", cores=2)
  assert hardware.cpu_peak(ht).flops == pytest.approx(2 * 32 * 2.6e9)
  assert hardware.cpu_peak(ht, available=[0]).flops == pytest.approx(32 * 2.6e9)
  # cpufreq's max clock wins over 'cpu MHz'; bogomips / 2 is the last resort.
  p = hardware.cpu_peak(ht, max_freq_khz=3.0e6)
  assert p.flops == pytest.approx(2 * 32 * 3.0e9) and "cpufreq" in p.source
  bogo = _cpuinfo(1, "GenuineIntel", 6, "fma avx2", mhz=None, extra="bogomips\t: 4000.00\n")
  p = hardware.cpu_peak(bogo)
  assert p.flops == pytest.approx(32 * 2.0e9) and "bogomips" in p.source
  amx = _cpuinfo(1, "GenuineIntel", 6, "fma avx2 avx512f avx512_bf16 amx_bf16")
  assert hardware.cpu_peak(amx, dtype="bfloat16").flops == pytest.approx(1024 * 2.6e9)
  assert hardware.cpu_peak("", dtype="float32").flops is None


def test_machine_line_names_cpu_model_cores_and_devices():
  class Dev:
    def __init__(self, platform, kind):
      self.platform, self.device_kind = platform, kind

  xeon = _cpuinfo(2, "GenuineIntel", 6, "fma avx2 avx512f avx512_bf16 amx_bf16",
                  extra="model\t\t: 143\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n")
  assert hardware.machine_line(xeon, available=2, logical=2, devices=[Dev("cpu", "cpu")]) == (
      "Machine: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (GenuineIntel family 6 model 143; "
      "amx_bf16, avx512_bf16, avx512f), 2 cores available; JAX devices: 1 x cpu.")
  epyc = _cpuinfo(4, "AuthenticAMD", 25, "fma avx2", extra="model name\t: AMD EPYC\n")
  assert hardware.machine_line(
      epyc, available=2, logical=4, devices=[Dev("gpu", "NVIDIA H100 80GB HBM3")] * 2) == (
      "Machine: AMD EPYC (AuthenticAMD family 25; avx2), 2 cores available (of 4 logical CPUs); "
      "JAX devices: 2 x NVIDIA H100 80GB HBM3 (gpu).")
  assert hardware.cpu_model("") != ""  # no /proc/cpuinfo: platform.processor() or 'unknown CPU'


def test_write_table_ends_with_the_machine_line(tmp_path, capsys):
  """The shared writer of the throughput tables (train_throughput, cifar_throughput,
  bench_accel, step_profile, input_pipeline, inception, vs_pytorch)."""
  out = tmp_path / "sub" / "t.md"
  train_throughput.write_table("# A table\n\n| a | b |\n|---|---|\n| 1 | 2 |\n", str(out))
  text = out.read_text()
  last = text.rstrip("\n").splitlines()[-1]
  assert text.startswith("# A table\n") and "| 1 | 2 |\n\nMachine: " in text
  assert last == hardware.machine_line() and last in capsys.readouterr().out
  with open("/proc/cpuinfo") as f:
    assert hardware.cpu_model(f.read()) in last
  assert f", {len(os.sched_getaffinity(0))} cores available" in last
  assert hardware.with_machine_line(text) == text  # one line, not two


def test_every_script_writing_a_results_table_names_the_machine():
  """Each benchmarks/*.py that writes a markdown file goes through write_table or
  with_machine_line."""
  bench = os.path.join(REPO, "benchmarks")
  writers = []
  for name in sorted(os.listdir(bench)):
    if not name.endswith(".py") or name == "hardware.py":
      continue
    src = open(os.path.join(bench, name)).read()
    if ".md" in src and ('"w")' in src or "write_table(" in src):
      writers.append(name)
      assert "write_table(" in src or "with_machine_line(" in src, name
  assert {"train_throughput.py", "vs_pytorch.py", "samplers.py",
          "sampling_throughput.py"} <= set(writers)


def test_this_host_has_a_peak():
  p = hardware.nominal_peak("float32")
  assert jax.devices()[0].platform != "cpu" or (p.flops is not None and p.flops > 1e9)


@pytest.mark.slow  # ~16 s; the float32 bench case and the table format stay in the default tier
def test_bench_case_bfloat16_row_and_mfu_cells():
  case = train_throughput.Case("MLP", "mlp", dict(width=16, num_blocks=1, embed_dim=8), (2,),
                               {})
  r = train_throughput.bench_case(case, 8, 2, "bfloat16")
  assert r["dtype"] == "bfloat16" and r["gflop_per_step"] > 0 and r["steps_per_s"] > 0
  peak = hardware.Peak(r["tflops"] * 1e12 * 4, "bfloat16", "f", "s")
  nom, meas = train_throughput.utilisation(r, {"bfloat16": peak},
                                           {"bfloat16": r["tflops"] * 1e12 * 2})
  assert (nom, meas) == ("25.0%", "50.0%")
  with pytest.raises(ValueError, match="float16"):
    train_throughput.bench_case(case, 8, 2, "float16")


def test_cifar_cases_follow_their_configs():
  pp, ncsn = cifar_throughput.CASES["ddpmpp"], cifar_throughput.CASES["ncsnpp"]
  assert (pp.model, pp.sde, pp.sde_fields["t_min"]) == ("ddpmpp", "vp", 1e-5)
  assert (ncsn.model, ncsn.sde, ncsn.sde_fields["sigma_max"]) == ("ncsnpp", "ve", 50.0)
  assert ncsn.param["time_input"] == "log_sigma" and ncsn.step["ema_decay"] == 0.999
  assert pp.optim["lr"] == 2e-4 and pp.kwargs["num_res_blocks"] == 4


def test_bench_fitting_halves_on_out_of_memory_only(monkeypatch):
  calls = []

  def fake(case, batch, steps, dtype):
    calls.append(batch)
    if batch > 32:
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9 GiB")
    return dict(batch=batch)

  monkeypatch.setattr(cifar_throughput, "bench_case", fake)
  r = cifar_throughput.bench_fitting(cifar_throughput.CASES["ddpm"], 128, 1, "float32")
  assert calls == [128, 64, 32] and r == dict(batch=32, asked_batch=128)

  def other(case, batch, steps, dtype):
    raise jax.errors.JaxRuntimeError("INTERNAL: something else")

  monkeypatch.setattr(cifar_throughput, "bench_case", other)
  with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
    cifar_throughput.bench_fitting(cifar_throughput.CASES["ddpm"], 128, 1, "float32")


def test_orchestrator_helpers(tmp_path, monkeypatch):
  assert bench_accel.train_pairs(["a", "b", "c"], ["f32", "bf16"], quick=True) == [
      ("a", "f32"), ("b", "bf16"), ("c", "f32")]
  assert len(bench_accel.train_pairs(["a", "b", "c"], ["f32", "bf16"], quick=False)) == 6
  m = tmp_path / "metrics.jsonl"
  m.write_text(json.dumps({"step": 50, "loss": 0.7}) + "\n" +
               json.dumps({"step": 100, "loss": 0.105}) + "\n")
  assert bench_accel.final_loss(str(m)) == (100, 0.105)
  assert bench_accel.verdict(0.105, 0.12) == "PASS"
  assert bench_accel.verdict(0.13, 0.12) == "FAIL"
  assert bench_accel.verdict(float("nan"), None).startswith("FAIL")
  assert bench_accel.DIGITS_LOSS_CPU < bench_accel.DIGITS_LOSS_THRESHOLD
  monkeypatch.setattr(bench_accel, "SAMPLING_SCRIPT", str(tmp_path / "absent.py"))
  lines, status = bench_accel.part_sampling(bench_accel.settings(True), ["heun"], ["float32"],
                                            str(tmp_path / "s.md"))
  assert status == "missing" and "NOT RUN" in "\n".join(lines)
  cmd = bench_accel.sampling_command(bench_accel.settings(False), ["heun"], ["float32"], "o")
  assert cmd[2:] == ["--nets", "ddpm", "ddpmpp", "ncsnpp", "--samplers", "heun", "--batch",
                     "128", "--dtypes", "float32", "--nfe_scale", "0.1", "--out", "o"]


def test_refuses_on_cpu_without_allow_cpu_quick(tmp_path, capsys):
  if jax.devices()[0].platform != "cpu":
    pytest.skip("an accelerator is present")
  out = tmp_path / "r.md"
  assert bench_accel.main(["--out", str(out)]) == 2
  assert bench_accel.main(["--allow_cpu", "--out", str(out)]) == 2
  assert "--allow_cpu --quick" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
def test_quick_mode_end_to_end(tmp_path):
  """The whole orchestrator on a CPU with --allow_cpu --quick (about 8 minutes on 2 cores)."""
  out = tmp_path / "bench.md"
  proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "bench_accel.py"),
                         "--allow_cpu", "--quick", "--out", str(out)], cwd=REPO,
                        capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = out.read_text()
  for head in ("## (a)", "## (b)", "## (c)", "## (d)", "Total wall time"):
    assert head in text
  assert text.count("[reduced: --quick]") == 3 and "skipped" not in text
  assert "finite (plumbing check, no threshold)" in text


def test_part_sampling_copies_the_scripts_table(tmp_path, monkeypatch):
  script = tmp_path / "sampling_throughput.py"
  table = "| sampler | images/s |\\n|---|---:|\\n| heun | 7 |\\n"
  script.write_text("import sys\nout = sys.argv[sys.argv.index('--out') + 1]\n"
                    f"open(out, 'w').write('{table}')\n")
  monkeypatch.setattr(bench_accel, "SAMPLING_SCRIPT", str(script))
  out = tmp_path / "s.md"
  lines, status = bench_accel.part_sampling(bench_accel.settings(True), ["heun"], ["float32"],
                                            str(out))
  assert status == "ok" and "| heun | 7 |" in "\n".join(lines)
  script.write_text("import sys\nsys.exit(3)\n")
  lines, status = bench_accel.part_sampling(bench_accel.settings(True), ["heun"], ["float32"],
                                            str(tmp_path / "t.md"))
  assert status == "failed" and "exit 3" in "\n".join(lines)


def test_part_vae_runs_the_vae_script(tmp_path, monkeypatch):
  """The accelerator check's VAE part: the SD VAE at 256 (the small preset at 64 with --quick),
  its table copied; a missing script is reported."""
  assert bench_accel.vae_command(False, ["float32"], "o")[2:] == [
      "--preset", "sd", "--size", "256", "--batch", "8", "--dtypes", "float32", "--out", "o"]
  assert bench_accel.vae_command(True, ["bfloat16"], "o")[2:6] == ["--preset", "small",
                                                                     "--size", "64"]
  script = tmp_path / "vae_throughput.py"
  script.write_text("import sys\nout = sys.argv[sys.argv.index('--out') + 1]\n"
                    "open(out, 'w').write('| encode | 3 |')\n")
  monkeypatch.setattr(bench_accel, "VAE_SCRIPT", str(script))
  lines, status = bench_accel.part_vae(bench_accel.settings(True), True, ["float32"],
                                       str(tmp_path / "v.md"))
  assert status == "ok" and "| encode | 3 |" in "\n".join(lines) and "(d)" in lines[0]
  monkeypatch.setattr(bench_accel, "VAE_SCRIPT", str(tmp_path / "absent.py"))
  _, status = bench_accel.part_vae(bench_accel.settings(True), True, ["float32"], "x")
  assert status == "missing"
