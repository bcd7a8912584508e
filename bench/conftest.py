"""Shared benchmark plumbing: telemetry in every result, one results file per device.

Every benchmark's `extra_info` gets the device's telemetry (GPU: name, memory used, power,
SM clock, utilisation via nvidia-ml-py; CPU: model and thread count). At the end of a run the
medians land in bench/results/<device>.json (merged by test id, rows of renamed or removed cases
dropped, written atomically), which
`python bench/table.py` turns into the README's performance table.
"""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path

import pytest

# Idle OpenMP threads sleep instead of spinning: on a 2-core machine the renderer, the env
# workers and threaded inference were measured up to 40x slower with spinning threads
# (docs/data.md). Must be set before torch starts OpenMP; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{cpu_model()} x{os.cpu_count()} threads"


def device_slug() -> str:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = f"cpu-{os.cpu_count()}core"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def telemetry() -> dict:
    info = {"device": device_name(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if not torch.cuda.is_available():
        info["cpu"] = cpu_model()
        info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "")
        return info
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        util = pynvml.nvmlDeviceGetUtilizationRates(h)
        info.update(
            gpu_mem_used_mib=mem.used / 2**20,
            gpu_power_w=pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
            gpu_sm_clock_mhz=pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
            gpu_util_pct=util.gpu,
        )
    except Exception as e:  # telemetry must never fail a benchmark
        info["telemetry_error"] = repr(e)
    return info


@pytest.fixture
def one_cpu_thread(request):
    """Batch-1 CPU work the way dva.control runs it: one torch thread. On the 2-vCPU Intel Xeon
    dev machine (2026-12-01) the `s` prediction step took 59 ms with 1 thread and 108 ms with 2
    (test_predict's -t2 row); on the loaded box F.group_norm (1, 64, 48, 48) took 15.4 ms with 2
    and 0.055 ms with 1. No-op on CUDA."""
    old = torch.get_num_threads()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    if "benchmark" in request.fixturenames:
        request.getfixturevalue("benchmark").extra_info["torch_threads_used"] = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _telemetry(request):
    yield
    # on an interrupt (Ctrl-C, a stage deadline) the item may hold no funcargs or a half-built fixture
    bench = getattr(request.node, "funcargs", {}).get("benchmark")
    if getattr(bench, "extra_info", None) is not None:
        bench.extra_info.update(telemetry())


def _git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Every benchmark id collected, before -k/-m deselect some: rows of the results file whose
    test file was collected but whose id was not, or whose file is gone, are stale."""
    config._dva_collected = {item.nodeid for item in items}


def pytest_sessionfinish(session, exitstatus):
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is None or bs.disabled or not bs.benchmarks or os.environ.get("DVA_BENCH_NO_SAVE"):
        return
    path = RESULTS / f"{device_slug()}.json"
    doc = {"device": device_name(), "benchmarks": {}}
    if path.exists():
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError:
            pass  # a broken results file is rewritten from this run
    collected = getattr(session.config, "_dva_collected", set())
    files = {c.split("::")[0] for c in collected}
    root = session.config.rootpath
    for k in list(doc["benchmarks"]):
        f = k.split("::")[0]
        if (f in files and k not in collected) or not (root / f).is_file():
            del doc["benchmarks"][k]
    for b in bs.benchmarks:
        if not b.stats:  # skipped / failed
            continue
        s = b.stats
        doc["benchmarks"][b.fullname] = {
            "group": b.group, "name": b.name, "median_s": s.median, "mean_s": s.mean, "min_s": s.min,
            "iqr_s": s.iqr, "stddev_s": s.stddev, "rounds": s.rounds, "extra_info": dict(b.extra_info),
            "commit": _git_commit(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    doc["device"] = device_name()
    doc["command"] = "python -m pytest bench/"
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, path)
