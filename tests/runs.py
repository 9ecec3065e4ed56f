"""Helpers for tests that run the entry points as real processes."""

import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XLA flags of the suite where the caller chose none (tests/conftest.py says why): most
# processes compile many small programs and run each a few steps; `long_run` children train
# for a minute or more.
OLDER_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _has_older_emitters() -> bool:
    """Whether this jaxlib's XLA still has the older CPU fusion emitters (jaxlib 0.11 rejects
    the flag that picks them), read without importing jax."""
    version = importlib.metadata.version("jaxlib").split(".")
    return tuple(int(v) for v in version[:2] if v.isdigit()) < (0, 11)


FAST_COMPILE = ("--xla_backend_optimization_level=0",) + (
    (OLDER_EMITTERS,) if _has_older_emitters() else ())
FAST_RUN = ("--xla_backend_optimization_level=1",)
# Set (to "1") by conftest when it chose these flags.
CHOSEN = "LEARNED_LOSS_TEST_XLA_FLAGS_CHOSEN"


def env(devices: int = 1, long_run: bool = False, default_emitters: bool = False,
        **extra) -> dict:
    """The environment of a child process with `devices` simulated CPU devices. `long_run`: an
    entry point that trains for a minute or more (FAST_RUN in place of FAST_COMPILE).
    `default_emitters`: FAST_COMPILE's LLVM level without its older fusion emitters, for a
    check of what XLA's default code generation computes (the fusions users' programs get)."""
    out = dict(os.environ)
    # The parent's other XLA flags are kept.
    flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", out.get("XLA_FLAGS", ""))
    if out.get(CHOSEN) and long_run:
        flags = " ".join([f for f in flags.split() if f not in FAST_COMPILE] + list(FAST_RUN))
    elif out.get(CHOSEN) and default_emitters:
        flags = " ".join(f for f in flags.split() if f != OLDER_EMITTERS)
    out["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {flags.strip()}".strip()
    out["JAX_PLATFORMS"] = "cpu"
    out.update(extra)
    return out


def command(module: str, workdir, config: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", module, f"--config={config}", f"--workdir={workdir}",
            *overrides]


def run(module: str, workdir, config: str, *overrides: str, devices: int = 1,
        timeout: float = 240, long_run: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(command(module, workdir, config, *overrides), cwd=ROOT,
                          env=env(devices, long_run), capture_output=True, text=True,
                          timeout=timeout)


def run_module(module: str, *flags: str, devices: int = 1, timeout: float = 240,
               default_emitters: bool = False) -> subprocess.CompletedProcess:
    """Runs `python -m module flags...` (an entry point without --config/--workdir)."""
    return subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT,
                          env=env(devices, default_emitters=default_emitters), capture_output=True,
                          text=True, timeout=timeout)


def start(module: str, workdir, config: str, *overrides: str, devices: int = 1,
          **extra_env) -> subprocess.Popen:
    return subprocess.Popen(command(module, workdir, config, *overrides), cwd=ROOT,
                            env=env(devices, **extra_env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def start_pair(module: str, workdir, config: str, *overrides: str, devices: int = 4,
               **extra_env) -> list[subprocess.Popen]:
    """Processes 0 and 1 of a 2-process run on this machine (`devices` CPU devices each; the
    coordinator on a free local port)."""
    port = free_port()
    return [start(module, workdir, config, *overrides, f"--coordinator_address=127.0.0.1:{port}",
                  "--num_processes=2", f"--process_id={i}", devices=devices, **extra_env)
            for i in range(2)]


def finish(processes: list[subprocess.Popen], timeout: float = 300, returncode: int = 0
           ) -> list[str]:
    """The processes' outputs, once each has exited with `returncode` (all are killed on a
    timeout)."""
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
    for process, output in zip(processes, outputs):
        assert process.returncode == returncode, output[-3000:]
    return outputs


def metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def deterministic(records: list[dict]) -> list[dict]:
    """Metric records without wall-clock figures (throughput, MFU, ETA)."""
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
