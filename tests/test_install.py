"""The install per platform: the pinned requirement files, the Makefile's ACCEL, the commands the
README and the start-up warning print, and (slow, asks the package index) that every platform's
pins resolve together to exactly themselves."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from experiments import runtime

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCEL_FILES = {os.path.basename(p)[len("requirements-"):-len(".txt")]: p
               for p in glob.glob(os.path.join(REPO, "requirements-*.txt"))
               if not p.endswith("-nodeps.txt")}


def _read(name):
  with open(os.path.join(REPO, name)) as f:
    return f.read()


def pins(path):
  """{canonical name: version} of a requirements file; every line must be an exact pin."""
  out = {}
  with open(path) as f:
    for line in f:
      line = line.split("#", 1)[0].strip()
      if not line:
        continue
      req = Requirement(line)
      spec = list(req.specifier)
      assert len(spec) == 1 and spec[0].operator == "==", f"{path}: {line!r} is not an exact pin"
      out[canonicalize_name(req.name)] = spec[0].version
  return out


def makefile_accels():
  m = re.search(r"^ACCELS := (.+)$", _read("Makefile"), re.M)
  return m.group(1).split()


def test_every_accelerator_of_the_makefile_has_its_pinned_file_and_nothing_else():
  assert makefile_accels()[0] == "cpu"
  assert sorted(makefile_accels()[1:]) == sorted(ACCEL_FILES) == ["cuda12", "cuda13", "tpu"]


@pytest.mark.parametrize("accel", sorted(ACCEL_FILES))
def test_accelerator_pins_match_the_pinned_jax(accel):
  base, extra = pins(os.path.join(REPO, "requirements.txt")), pins(ACCEL_FILES[accel])
  assert not set(base) & set(extra), "an accelerator file re-pins a package of requirements.txt"
  jax_version = base["jax"]
  assert base["jaxlib"] == jax_version
  plugins = {n: v for n, v in extra.items() if n.startswith("jax-")}
  if accel == "tpu":
    assert set(extra) == {"libtpu"}
  else:
    assert set(plugins) == {f"jax-{accel}-plugin", f"jax-{accel}-pjrt"}
    assert set(plugins.values()) == {jax_version}, plugins
  header = _read(os.path.basename(ACCEL_FILES[accel]))
  assert f"make venv ACCEL={accel}`" in header
  assert f"pip install -r requirements.txt -r requirements-{accel}.txt" in header


def test_setup_ranges_hold_the_pinned_versions():
  """setup.py's ranges admit every pinned version they name (the ranges are honest)."""
  text = _read("setup.py")
  ranges = [Requirement(r) for r in re.findall(r'^\s+"([A-Za-z][^"]*)",', text, re.M)]
  base = pins(os.path.join(REPO, "requirements.txt"))
  checked = 0
  for req in ranges:
    name = canonicalize_name(req.name)
    if name in base:
      assert req.specifier.contains(base[name]), f"setup.py {req} excludes the pin {base[name]}"
      checked += 1
  assert checked >= 15, checked
  py = re.search(r'python_requires=">=(\d+\.\d+)"', text).group(1)
  assert Version(py) >= Version("3.12")  # jax 0.11+ publishes no wheels for 3.11


def test_readme_install_commands_are_the_makefiles_and_the_warnings():
  readme = _read("README.md")
  named = set(re.findall(r"make (?:clean )?venv ACCEL=(\w+)", readme))
  assert named == set(makefile_accels()[1:]), named
  for cmds in runtime.INSTALL_COMMANDS.values():
    for cmd in cmds:
      assert cmd in readme, f"the start-up warning's {cmd!r} is not in README.md"
  for accel in ACCEL_FILES:
    assert f"requirements-{accel}.txt" in readme
  assert "make bench-accel" in readme and "make doctor" in readme


def _make_dry_run(tmp_path, *args):
  """``make -n`` on a copy of the Makefile (and the files its venv rule depends on)."""
  for f in ["Makefile", "requirements.txt", "requirements-nodeps.txt", "setup.py",
            *[os.path.basename(p) for p in ACCEL_FILES.values()]]:
    shutil.copy(os.path.join(REPO, f), tmp_path / f)
  return subprocess.run(["make", "-n", *args], cwd=tmp_path, capture_output=True, text=True)


@pytest.mark.slow  # ~35 s: make venv in a temp copy (the pins and ranges: the tests above)
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_venv_installs_the_accelerators_file_and_remembers_it(tmp_path):
  for accel in makefile_accels():
    r = _make_dry_run(tmp_path, "venv", f"ACCEL={accel}")
    assert r.returncode == 0, r.stderr
    install = [l for l in r.stdout.splitlines() if "pip install --quiet -r requirements.txt" in l]
    extra = "" if accel == "cpu" else f" -r requirements-{accel}.txt"
    assert len(install) == 1 and install[0].rstrip().endswith("requirements.txt" + extra), install
    assert f"echo {accel} > .venv/.accel" in r.stdout
  r = _make_dry_run(tmp_path, "venv", "ACCEL=gpu")
  assert r.returncode != 0 and "ACCEL=gpu is not one of: cpu cuda12 cuda13 tpu" in r.stderr
  os.makedirs(tmp_path / ".venv")
  (tmp_path / ".venv" / ".accel").write_text("cuda12\n")
  r = _make_dry_run(tmp_path, "test")  # the venv's ACCEL is kept
  assert r.returncode == 0 and "requirements-cuda12.txt" in r.stdout, r.stderr
  r = _make_dry_run(tmp_path, "venv", "ACCEL=tpu")
  assert r.returncode != 0 and "make clean venv ACCEL=tpu" in r.stderr, r.stderr
  r = _make_dry_run(tmp_path, "clean", "venv", "ACCEL=tpu")
  assert r.returncode == 0 and "requirements-tpu.txt" in r.stdout, r.stderr


def _fake_root(tmp_path, files):
  for rel, text in files.items():
    p = tmp_path / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
  return str(tmp_path)


def test_visible_accelerators_reads_nvidia_device_files_and_tpu_pci_ids(tmp_path):
  assert runtime.visible_accelerators(_fake_root(tmp_path / "cpu", {"proc/x": ""})) == {}
  gpu = _fake_root(tmp_path / "gpu", {"dev/nvidiactl": ""})
  assert runtime.visible_accelerators(gpu) == {"gpu": "/dev/nvidiactl"}
  pci = "sys/bus/pci/devices/0000:00:0{}.0/{}"
  tpu = _fake_root(tmp_path / "tpu", {
      pci.format(4, "vendor"): "0x1ae0\n", pci.format(4, "device"): "0x0042\n",  # gVNIC: a NIC
      pci.format(5, "vendor"): "0x1ae0\n", pci.format(5, "device"): "0x0063\n",
      pci.format(6, "vendor"): "0x1ae0\n", pci.format(6, "device"): "0x0063\n",
      pci.format(7, "vendor"): "0x10de\n", pci.format(7, "device"): "0x0063\n"})
  assert runtime.visible_accelerators(tpu) == {"tpu": "2 TPU v5e chips"}
  nic_only = _fake_root(tmp_path / "nic", {pci.format(4, "vendor"): "0x1ae0",
                                           pci.format(4, "device"): "0x0042"})
  assert runtime.visible_accelerators(nic_only) == {}


def test_cpu_fallback_warning_only_when_an_accelerator_goes_unused():
  assert runtime.cpu_fallback_warning("cpu", {}) is None
  assert runtime.cpu_fallback_warning("gpu", {"gpu": "/dev/nvidia0"}) is None
  assert runtime.cpu_fallback_warning("tpu", {"tpu": "4 TPU v4 chips"}) is None
  w = runtime.cpu_fallback_warning("cpu", {"gpu": "/dev/nvidia0"})
  assert w.startswith("warning: an NVIDIA GPU is visible (/dev/nvidia0) but JAX runs on the CPU")
  assert "`make clean venv ACCEL=cuda12`" in w and "`make clean venv ACCEL=cuda13`" in w
  assert "\n" not in w
  w = runtime.cpu_fallback_warning("cpu", {"tpu": "4 TPU v4 chips"})
  assert "a TPU is visible (4 TPU v4 chips)" in w and "`make clean venv ACCEL=tpu`" in w


def test_platform_line():
  assert (runtime.platform_line("0.12.0", "cpu", ["cpu"], 1, 1, 0, 1)
          == "jax 0.12.0 on cpu: 1 device (cpu), 1 process")
  assert (runtime.platform_line("0.12.0", "gpu", ["NVIDIA H100 80GB HBM3"] * 8, 8, 16, 1, 2)
          == "jax 0.12.0 on gpu: 8 devices (NVIDIA H100 80GB HBM3), process 1 of 2 "
             "(16 devices in all)")


def test_doctor_reports_versions_devices_cache_and_checks(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
  r = subprocess.run([sys.executable, "-m", "experiments.doctor"], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  import jax
  out = r.stdout
  assert f"jax {jax.__version__}, jaxlib " in out
  assert re.search(rf"^jax {re.escape(jax.__version__)} on \w+: \d+ devices? \(", out, re.M)
  assert f"compilation cache: {tmp_path / 'cache'} (not created yet" in out
  assert re.search(r"^bfloat16: .*largest error relative to float32 \d\.\de-0[23]$", out, re.M)
  assert re.search(r"^fused attention: ", out, re.M)
  assert re.search(r"^host memory: \d+\.\d GiB total", out, re.M)


@pytest.mark.slow
@pytest.mark.parametrize("accel", ["cpu", *sorted(ACCEL_FILES)])
def test_every_platforms_pins_resolve_together_to_exactly_themselves(accel, tmp_path):
  """Asks the package index (network) what `pip install -r requirements.txt [-r
  requirements-<accel>.txt]` would install into an empty environment, without installing: the
  set must be exactly the pinned one (nothing missing, nothing unpinned pulled in)."""
  files = ["requirements.txt"] + ([] if accel == "cpu" else [f"requirements-{accel}.txt"])
  report = tmp_path / "report.json"
  cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report)]
  for f in files:
    cmd += ["-r", os.path.join(REPO, f)]
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(report) as f:
    resolved = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
                for i in json.load(f)["install"]}
  wanted = {}
  for f in files:
    wanted.update(pins(os.path.join(REPO, f)))
  assert resolved == wanted, {"unpinned": sorted(set(resolved) - set(wanted)),
                              "differ": {n: (wanted[n], resolved[n]) for n in wanted
                                         if n in resolved and resolved[n] != wanted[n]}}
