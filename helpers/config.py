"""One place for every knob of the course: the three profiles, seeds, device, results.

A *profile* says how big every experiment is. Notebooks and the command line read the
same profile, so `COURSE_PROFILE=smoke` makes the whole course tiny (CI), `cpu` makes it
meaningful on a laptop, and `gpu` uses all data and bigger models.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import random
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# Tokenizers' thread pool forks badly inside Jupyter and DataLoader workers; the course
# tokenises in the main process, so quiet the warning for everyone who imports helpers.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# oneDNN (PyTorch's CPU matrix kernels) caches a compiled kernel, with the weights reordered for
# it, for each input shape it meets (1,024 by default). Length-grouped batches bring many shapes:
# notebook 03's memory grew by ~2 GB over a run. 16 entries: peak 1.7 GB instead of 2.7 GB over
# 900 pretraining steps, at the same speed. Read when oneDNN first runs, so setting it here works.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    # --- data ---------------------------------------------------------------------------
    max_train_examples: int | None  # per training run; None = every example
    max_eval_examples: int | None  # per evaluation; None = every example
    max_seq_len: int  # tokens per review after truncation
    # --- fine-tuning ----------------------------------------------------------------------
    batch_size: int
    epochs: int
    learning_rate: float
    warmup_ratio: float
    seeds: tuple[int, ...]  # repeated runs, for the spread over seeds
    freeze_embeddings: bool  # freeze word embeddings of big-vocabulary encoders (CPU speed)
    bf16: bool  # bf16 autocast where the chip computes bf16 natively (see native_bf16)
    # --- models ---------------------------------------------------------------------------
    multilingual_model: str  # registry name or hub id (see helpers.models)
    english_model: str
    hub_multilingual_model: str | None  # preferred when the hub is reachable
    mini_bert: dict = field(default_factory=dict)  # BertConfig kwargs of the from-scratch BERT
    # Fine-tuning a mini BERT: a small model takes a larger rate and more epochs than the big
    # encoders (in the cpu profile, 5e-5 for 3 epochs left it at 52-54% on the English test split).
    mini_bert_learning_rate: float = 3e-4
    mini_bert_epochs: int = 10
    tokenizer_vocab_size: int = 8000  # WordPiece vocabulary trained in notebook 02
    # --- pretraining (notebook 03) --------------------------------------------------------
    pretrain_steps: int = 100
    pretrain_batch_size: int = 32
    pretrain_seq_len: int = 128
    pretrain_learning_rate: float = 5e-4
    pretrain_max_documents: int | None = None  # per language; None = the whole corpus
    checkpoint_every: int = 50
    # --- experiments ----------------------------------------------------------------------
    data_sizes: tuple[int, ...] = (16, 64, 256)  # data-efficiency curve (notebook 04)
    few_shot_ks: tuple[int, ...] = (0, 16, 64, 256)  # few-shot curve (notebook 06)
    # per language; the real-world (wild) test sets hold thousands of reviews (notebook 05)
    max_wild_eval_examples: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def mini_bert_finetuning(self) -> dict:
        """`finetune` keyword arguments for a mini BERT: its own rate and epochs, every weight
        trained (its 8,000-piece vocabulary is cheap, unlike the big encoders')."""
        return dict(learning_rate=self.mini_bert_learning_rate, epochs=self.mini_bert_epochs,
                    freeze_embeddings=False)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="CI: every notebook in seconds on 2 CPU cores; numbers are NOT meaningful",
        max_train_examples=96,
        max_eval_examples=64,
        max_seq_len=48,
        batch_size=16,
        epochs=1,
        learning_rate=5e-5,
        warmup_ratio=0.1,
        seeds=(0,),
        freeze_embeddings=True,
        bf16=False,
        multilingual_model="multilingual-e5-small",
        english_model="minilm-en",
        hub_multilingual_model=None,
        mini_bert=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=128, max_position_embeddings=128),
        mini_bert_epochs=1,
        tokenizer_vocab_size=2000,
        pretrain_steps=8,
        pretrain_batch_size=8,
        pretrain_seq_len=48,
        pretrain_learning_rate=1e-3,
        pretrain_max_documents=40,
        checkpoint_every=4,
        data_sizes=(16, 32),
        few_shot_ks=(0, 16),
        max_wild_eval_examples=32,
    ),
    "cpu": Profile(
        name="cpu",
        description="a laptop, offline: the whole course in under 45 minutes on 2 cores",
        max_train_examples=None,
        max_eval_examples=None,
        max_seq_len=96,
        batch_size=16,
        epochs=3,
        learning_rate=5e-5,
        warmup_ratio=0.1,
        seeds=(0, 1, 2),
        freeze_embeddings=True,
        bf16=True,
        multilingual_model="multilingual-e5-small",
        english_model="minilm-en",
        hub_multilingual_model=None,
        # hidden 128 keeps each of notebook 03's two pretraining runs to a few minutes; the budget
        # is sized for a class (the notebook measures how little it buys), not for NSP to leave
        # its plateau (see the teacher notes).
        mini_bert=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                       intermediate_size=512, max_position_embeddings=256),
        tokenizer_vocab_size=8000,
        pretrain_steps=640,
        pretrain_batch_size=32,
        pretrain_seq_len=128,
        pretrain_learning_rate=1e-3,
        pretrain_max_documents=None,
        checkpoint_every=320,
        data_sizes=(16, 64, 256),
        few_shot_ks=(0, 16, 64, 256),
        max_wild_eval_examples=300,
    ),
    "gpu": Profile(
        name="gpu",
        description="one CUDA GPU: all data, bigger models, bf16",
        max_train_examples=None,
        max_eval_examples=None,
        max_seq_len=128,
        batch_size=32,
        epochs=4,
        learning_rate=3e-5,
        warmup_ratio=0.1,
        seeds=(0, 1, 2, 3, 4),
        freeze_embeddings=False,
        bf16=True,
        multilingual_model="multilingual-e5-small",
        english_model="minilm-en",
        hub_multilingual_model="xlm-roberta-base",
        mini_bert=dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                       intermediate_size=2048, max_position_embeddings=512),
        tokenizer_vocab_size=16000,
        pretrain_steps=10000,
        pretrain_batch_size=128,
        pretrain_seq_len=128,
        pretrain_learning_rate=5e-4,
        pretrain_max_documents=None,
        checkpoint_every=1000,
        data_sizes=(16, 64, 256),
        few_shot_ks=(0, 16, 64, 256),
        max_wild_eval_examples=None,
    ),
}


class UnknownProfileError(ValueError):
    pass


def get_profile(name: str | None = None) -> Profile:
    """The profile named `name`, else $COURSE_PROFILE, else gpu with CUDA and cpu without."""
    name = name or os.environ.get("COURSE_PROFILE") or None
    if name is None:
        import torch

        name = "gpu" if torch.cuda.is_available() else "cpu"
    key = name.strip().lower()
    if key not in PROFILES:
        raise UnknownProfileError(
            f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}")
    return PROFILES[key]


def add_profile_argument(parser) -> None:
    """Add --profile to a command-line parser (finetune, pretrain, bench). An unknown name, given
    or taken from $COURSE_PROFILE, is refused by argparse itself: usage, the valid names, exit 2."""
    import argparse

    def known(name: str) -> str:
        try:
            return get_profile(name).name
        except UnknownProfileError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    # argparse passes a string default through `type` too, so a bad $COURSE_PROFILE is caught here
    parser.add_argument("--profile", type=known, default=os.environ.get("COURSE_PROFILE") or None,
                        help="smoke, cpu or gpu (default: $COURSE_PROFILE, else gpu with CUDA, "
                             "else cpu)")


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

    On such a CPU (measured on 2 cores with AVX512-BF16) a training step of the cpu profile's
    models took 0.5-0.7x the float32 time. Without the instructions bf16 is emulated and slower
    than float32, and Apple's mps is left in float32 too.
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

    glibc keeps freed heap memory for later use, so after a fine-tuning run a process can hold
    a gigabyte it no longer uses (measured: fine-tuning multilingual-e5-small on 64 reviews left
    1.7 GB resident for 0.2 GB of live tensors; malloc_trim took it to 0.7 GB). Each later run
    then climbs from there, and a notebook with many runs ends far above what it ever needed at
    once. A no-op where the C library has no malloc_trim (macOS, Windows, musl)."""
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

def _from_root(path: str) -> Path:
    """Relative paths are relative to the repository, not to wherever a kernel was started
    (nbval and JupyterLab start kernels in notebooks/)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


def build_dir() -> Path:
    """Executed notebooks, checkpoints and results ($COURSE_BUILD_DIR, default build/)."""
    return _from_root(os.environ.get("COURSE_BUILD_DIR", "build"))


def cache_dir() -> Path:
    """Converted models and extracted data ($COURSE_CACHE_DIR, default .cache/ in the repo)."""
    path = _from_root(os.environ.get("COURSE_CACHE_DIR", ".cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_path() -> Path:
    return build_dir() / "results.json"


# --- recording results --------------------------------------------------------------------

def record(notebook: str, **values) -> dict:
    """Merge `values` into build/results.json under `notebook`; returns that notebook's entry.

    Values must be JSON-serialisable (numbers, strings, lists, dicts). The file also notes the
    profile each notebook ran under, so numbers from different profiles are never mixed up.
    """
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    entry = data.setdefault("notebooks", {}).setdefault(notebook, {})
    entry.setdefault("results", {}).update(_jsonable(values))
    entry["profile"] = os.environ.get("COURSE_PROFILE") or get_profile().name
    entry["recorded_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)  # atomic: an interrupted write never leaves half a file
    return entry


def load_results(path: Path | None = None) -> dict:
    path = Path(path) if path else results_path()
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


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


def hub_reachable(timeout: float = 1.5) -> bool:
    """True when huggingface.co answers within `timeout` seconds (checked once per process).

    HF_HUB_OFFLINE=1 means no. Never hangs: a plain TCP connect with a short timeout.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if "hub" not in _HUB_STATE:
        try:
            with socket.create_connection(("huggingface.co", 443), timeout=timeout):
                _HUB_STATE["hub"] = True
        except OSError:
            _HUB_STATE["hub"] = False
    return _HUB_STATE["hub"]


def with_overrides(profile: Profile, **changes) -> Profile:
    """A copy of `profile` with some knobs changed (for exercises and the CLI)."""
    return replace(profile, **changes)


# --- the one setup cell of every notebook --------------------------------------------------

def run_times_path() -> Path:
    """Measured wall time and peak memory per profile and notebook, kept across `make course`
    runs of every profile (written by helpers.course)."""
    return ROOT / "build" / "run_times.json"


def measured_run_times(notebook: str | None = None) -> dict:
    """{profile: {notebook: {"wall_s", "peak_mb", "date", ...}}} from past runs, or one notebook's
    {profile: {...}} when `notebook` is given. Empty until a notebook has been run by
    `make course` (or `make test` for smoke) on this machine."""
    path = run_times_path()
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if notebook is None:
        return data
    return {prof: nbs[notebook] for prof, nbs in data.items() if notebook in nbs}


def start_notebook(notebook: str, seed: int = 0) -> Profile:
    """Pick the profile, seed everything, set the plot style, and say what this run is."""
    profile = get_profile()
    set_seed(seed)
    try:
        import seaborn as sns

        sns.set_theme(context="notebook", style="whitegrid")
        from helpers.plots import chinese_font

        chinese_font()  # after set_theme, which resets the font families
    except ImportError:  # plotting is optional for the command line
        pass
    print(f"profile: {profile.name} ({profile.description}); device: {get_device()}")
    if profile.name == "smoke":
        print("SMOKE PROFILE: tiny models and data so the notebook runs in seconds; "
              "the numbers below are NOT meaningful. Use COURSE_PROFILE=cpu for real results.")
    times = measured_run_times(notebook)
    if times:
        parts = [f"{p}: {t['wall_s']:.0f} s, peak {t['peak_mb']:.0f} MB ({t['date']})"
                 for p, t in sorted(times.items())]
        print("measured run time of this notebook on this machine: " + "; ".join(parts))
    else:
        print("run time of this notebook not measured on this machine yet (make course measures it)")
    return profile


def _check_main(argv: list[str]) -> int:
    """`python3 -m helpers.config check`: validate $COURSE_PROFILE with the standard library only,
    so `make` can refuse a bad profile at once, before it installs anything."""
    try:
        name = os.environ.get("COURSE_PROFILE")
        if name:
            get_profile(name)
    except UnknownProfileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_check_main(sys.argv[1:]))
