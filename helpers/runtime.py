"""What every part of the course needs at run time: seeds, the device and its precision,
memory, where files go, the recorded results, and whether the model hub answers.

Nothing here chooses a profile: the edges (helpers.config.start_notebook and the command lines)
do, and pass what they chose down as arguments.
"""
from __future__ import annotations

import ctypes
import gc
import os
import random
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from helpers.io import locked, read_json, write_json

# Tokenizers' thread pool forks badly inside Jupyter and DataLoader workers; the course
# tokenises in the main process, so quiet the warning for everyone who imports helpers.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# oneDNN (PyTorch's CPU matrix kernels) caches a compiled kernel per input shape (1,024 by
# default), and length-grouped batches bring many shapes: a small cache keeps memory flat at the
# same speed (README, "Measurements behind the code"). Read when oneDNN first runs.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

ROOT = Path(__file__).resolve().parent.parent


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run can be repeated exactly."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def native_bf16(device=None) -> bool:
    """Whether `device` (default: get_device()) computes in bf16 natively, so that bf16 autocast
    pays: a CUDA GPU with bf16 support, or a CPU with AVX512-BF16 or AMX-BF16 instructions.

    Without the instructions bf16 is emulated and slower than float32; Apple's mps stays float32.
    """
    import torch

    device = torch.device(device) if device is not None else get_device()
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    try:
        capabilities = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # a torch that cannot tell
        return False
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def release_memory() -> None:
    """Hand memory that Python and torch have freed back to the operating system.

    glibc keeps freed heap memory for later use, so a notebook with many fine-tuning runs would
    end far above what it ever needed at once. A no-op without malloc_trim (macOS, Windows)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def get_device():
    """cuda when available, else Apple's mps, else cpu."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# --- where things go ----------------------------------------------------------------------

@dataclass
class Settings:
    """Where files go and what the model hub may do. The edges fill it from the environment
    (helpers.config.read_environment); everything below reads it and never the environment."""
    build: Path = ROOT / "build"  # executed notebooks, checkpoints, results ($COURSE_BUILD_DIR)
    cache: Path = ROOT / ".cache"  # converted models, extracted data ($COURSE_CACHE_DIR)
    prefer_hub: bool = False  # hub models over the embedded ones, if reachable ($COURSE_PREFER_HUB)
    offline: bool = False  # never ask the hub ($HF_HUB_OFFLINE)


SETTINGS = Settings()


def from_root(path: str | Path) -> Path:
    """Relative paths are relative to the repository, not to wherever a kernel was started
    (nbval and JupyterLab start kernels in notebooks/)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


def build_dir() -> Path:
    return SETTINGS.build


def cache_dir() -> Path:
    SETTINGS.cache.mkdir(parents=True, exist_ok=True)
    return SETTINGS.cache


def results_path() -> Path:
    return build_dir() / "results.json"


# --- recording results --------------------------------------------------------------------

def record(notebook: str, profile, **values) -> dict:
    """Merge `values` into build/results.json under `notebook`, noting the profile (a Profile or
    its name) they were measured in; returns that notebook's entry. Values must be numbers,
    strings, lists or dicts (numpy and torch scalars and arrays are converted)."""
    path = results_path()
    with locked(path):  # two notebooks running at once keep each other's results
        data = read_json(path, {})
        entry = data.setdefault("notebooks", {}).setdefault(notebook, {})
        entry.setdefault("results", {}).update(_jsonable(values))
        entry["profile"] = getattr(profile, "name", profile)
        entry["recorded_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json(path, data)
    return entry


def load_results(path: Path | None = None) -> dict:
    return read_json(Path(path) if path else results_path(), {})


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


# --- the model hub, when there is one ----------------------------------------------------

_HUB_STATE: dict[str, bool] = {}
HUB = ("huggingface.co", 443)


def _connects(address, timeout: float, answer: dict) -> None:
    try:
        with socket.create_connection(address, timeout=timeout):
            answer["ok"] = True
    except OSError:
        answer["ok"] = False


def hub_reachable(timeout: float = 1.5) -> bool:
    """True when huggingface.co answers within `timeout` seconds (checked once per process).

    SETTINGS.offline means no. Never hangs, whatever name lookup does: the lookup and the
    connection run in a thread that is given `timeout` seconds in all, then abandoned.
    """
    if SETTINGS.offline:
        return False
    if "hub" not in _HUB_STATE:
        answer: dict = {}
        probe = threading.Thread(target=_connects, args=(HUB, timeout, answer), daemon=True)
        probe.start()
        probe.join(timeout)
        _HUB_STATE["hub"] = answer.get("ok", False)
        if not _HUB_STATE["hub"]:
            print(f"the Hugging Face hub did not answer within {timeout:g} s: working offline",
                  file=sys.stderr)
    return _HUB_STATE["hub"]


def run_times_path() -> Path:
    """Measured wall time and peak memory per profile and notebook, kept across `make course`
    runs of every profile (written by helpers.course)."""
    return ROOT / "build" / "run_times.json"


def measured_run_times(notebook: str | None = None) -> dict:
    """{profile: {notebook: {"wall_s", "peak_mb", "date", ...}}} from past `make course` runs
    (`make test` for smoke), or one notebook's {profile: {...}} when `notebook` is given."""
    data = read_json(run_times_path(), {})
    if notebook is None:
        return data
    return {prof: nbs[notebook] for prof, nbs in data.items() if notebook in nbs}
