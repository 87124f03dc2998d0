"""Every knob of the course: the three profiles, chosen at the edges (start_notebook, --profile).

A *profile* says how big every experiment is. Notebooks and the command line read the
same profile, so `COURSE_PROFILE=smoke` makes the whole course tiny (CI), `cpu` makes it
meaningful on a laptop, and `gpu` uses all data and bigger models.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, replace

# What notebooks import from here next to their profile (defined in helpers.runtime).
from helpers.runtime import (ROOT, SETTINGS, build_dir, cache_dir, from_root,  # noqa: F401
                             get_device, hub_reachable, measured_run_times, native_bf16, record,
                             release_memory, set_seed)


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
    # --- running notebooks -----------------------------------------------------------------
    cell_timeout_s: int = 300  # a cell that runs longer stops the run and is named (make course)

    def to_dict(self) -> dict:
        return asdict(self)

    def mini_bert_finetuning(self) -> dict:
        """`finetune` keyword arguments for a mini BERT: its own rate and epochs, every weight
        trained (its 8,000-piece vocabulary is cheap, unlike the big encoders')."""
        return dict(learning_rate=self.mini_bert_learning_rate, epochs=self.mini_bert_epochs,
                    freeze_embeddings=False)


# The cpu profile in full; smoke and gpu say only what they change.
CPU = Profile(
    name="cpu",
    description="a laptop, offline: the whole course on 2 CPU cores in under 4 GB (run times: README)",
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
    cell_timeout_s=2700,  # room for notebook 04's longest cell on 2 float32 cores (README)
)
PROFILES: dict[str, Profile] = {
    "smoke": replace(
        CPU,
        name="smoke",
        description="CI: every notebook in seconds on 2 CPU cores; numbers are NOT meaningful",
        max_train_examples=48,
        max_eval_examples=64,
        max_seq_len=32,
        epochs=1,
        seeds=(0,),
        bf16=False,
        mini_bert=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=128, max_position_embeddings=128),
        mini_bert_epochs=1,
        tokenizer_vocab_size=2000,
        pretrain_steps=8,
        pretrain_batch_size=8,
        pretrain_seq_len=48,
        pretrain_max_documents=40,
        checkpoint_every=4,
        data_sizes=(16, 32),
        few_shot_ks=(0, 16),
        max_wild_eval_examples=32,
        cell_timeout_s=300,
    ),
    "cpu": CPU,
    "gpu": replace(
        CPU,
        name="gpu",
        description="one CUDA GPU: all data, bigger models, bf16",
        max_seq_len=128,
        batch_size=32,
        epochs=4,
        learning_rate=3e-5,
        seeds=(0, 1, 2, 3, 4),
        freeze_embeddings=False,
        hub_multilingual_model="xlm-roberta-base",
        mini_bert=dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                       intermediate_size=2048, max_position_embeddings=512),
        tokenizer_vocab_size=16000,
        pretrain_steps=10000,
        pretrain_batch_size=128,
        pretrain_learning_rate=5e-4,
        checkpoint_every=1000,
        max_wild_eval_examples=None,
        cell_timeout_s=1800,
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


def read_environment(environ=None) -> None:
    """Fill helpers.runtime.SETTINGS from COURSE_BUILD_DIR, COURSE_CACHE_DIR, COURSE_PREFER_HUB
    and HF_HUB_OFFLINE. Only the edges call this (start_notebook, the command lines)."""
    environ = os.environ if environ is None else environ

    def yes(name: str) -> bool:
        return environ.get(name, "").strip().lower() in ("1", "true", "yes")

    SETTINGS.build = from_root(environ.get("COURSE_BUILD_DIR") or "build")
    SETTINGS.cache = from_root(environ.get("COURSE_CACHE_DIR") or ".cache")
    SETTINGS.prefer_hub, SETTINGS.offline = yes("COURSE_PREFER_HUB"), yes("HF_HUB_OFFLINE")


def with_overrides(profile: Profile, **changes) -> Profile:
    """A copy of `profile` with some knobs changed (for exercises and the CLI)."""
    return replace(profile, **changes)


def start_notebook(notebook: str, seed: int = 0) -> Profile:
    """Pick the profile, seed everything, set the plot style, and say what this run is."""
    read_environment()
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
