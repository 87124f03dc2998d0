"""The command lines: `python -m helpers finetune|predict|pretrain|bench` (helpers/__main__.py
dispatches). This is an edge of the package: the profile is chosen here, from --profile or
$COURSE_PROFILE, and passed down as an argument.

Each command returns its exit code: 0 done, 1 bad data, 2 bad usage (argparse's own).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from helpers.config import PROFILES, add_profile_argument, get_profile, with_overrides
from helpers.io import writing


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _seed(value: str) -> int:
    try:
        seed = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be a whole number, got {value!r}") from None
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"--seed must be between 0 and 2**32 - 1, got {seed}")
    return seed


def _split_list(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{what}: give a comma-separated list")
    return items


# --- finetune ---------------------------------------------------------------------------------

def _finetune_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers finetune",
        description="Fine-tune an encoder for review sentiment; saves a model for `predict`.")
    parser.add_argument("--model", required=True, help="mini-bert, minilm-en, "
                        "multilingual-e5-small, a hub id or a local directory")
    parser.add_argument("--train-langs", default="en",
                        type=lambda v: _split_list(v, "--train-langs"),
                        help="languages to train (and validate) on, e.g. en or en,zh")
    parser.add_argument("--domains", default=None, help="all (default), or e.g. books,hotel",
                        type=lambda v: None if v.strip().lower() == "all"
                        else _split_list(v, "--domains"))
    add_profile_argument(parser)
    parser.add_argument("--output", required=True, type=Path, help="directory for the model")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=_seed, default=0)
    parser.add_argument("--patience", type=int, default=None,
                        help="stop after this many epochs without a better validation accuracy")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true",
                      help="continue from the checkpoint in OUTPUT/training")
    what.add_argument("--overwrite", action="store_true",
                      help="replace what OUTPUT holds (a model, a checkpoint) with a new run")
    return parser


def _check_output_folder(args) -> str | None:
    """Why OUTPUT cannot take this run (None when it can); clears a finished model's marker and
    metrics when the run may replace it, so an interrupted run is never taken for finished."""
    from helpers.training import MODEL_INFO

    out = args.output
    if out.exists() and not out.is_dir():
        return f"--output {out} is a file, not a folder; give a folder for the model"
    if out.is_dir() and any(out.iterdir()) and not (args.resume or args.overwrite):
        if (out / "training" / "checkpoint").is_dir() and not (out / MODEL_INFO).exists():
            return (f"{out} holds an interrupted run: add --resume to continue it, or "
                    "--overwrite to start again")
        return f"{out} is not empty: add --overwrite to replace what it holds, or pick a new folder"
    if args.overwrite and (out / "training").is_dir():
        import shutil

        shutil.rmtree(out / "training")
    for name in (MODEL_INFO, "metrics.json"):  # the marker goes first, the metrics with it
        (out / name).unlink(missing_ok=True)
    return None


def _review_splits(args, profile, prefix: str):
    """(train, validation, test) for the command's languages and domains, capped by the profile
    and each text behind the encoder's prefix."""
    from helpers.data import load_reviews, sample

    train = sample(load_reviews("train", langs=args.train_langs, domains=args.domains),
                   profile.max_train_examples, args.seed)
    val = sample(load_reviews("validation", langs=args.train_langs, domains=args.domains),
                 profile.max_eval_examples, args.seed)
    test = load_reviews("test", domains=args.domains)
    if prefix:  # e5 reads every text after its task prefix, in training as in prediction
        train, val, test = (ds.map(lambda row: {"text": prefix + row["text"]})
                            for ds in (train, val, test))
    return train, val, test


def _score_splits(model, tokenizer, splits: dict, profile, seed: int, bf16: bool) -> dict:
    """{split: {lang: accuracy, macro_f1, examples}}, printed as it goes."""
    from helpers.data import sample
    from helpers.training import evaluate

    scores = {}
    for split, ds in splits.items():
        scores[split] = {}
        for lang in sorted(set(ds["lang"])):
            part = sample(ds.filter(lambda x, lang=lang: x["lang"] == lang),
                          profile.max_eval_examples, seed)
            result = evaluate(model, tokenizer, part, max_length=profile.max_seq_len, bf16=bf16)
            scores[split][lang] = dict(result, examples=len(part))
            print(f"{split} accuracy {lang}: {result['accuracy']:.3f} "
                  f"(macro-F1 {result['macro_f1']:.3f}, {len(part)} reviews)")
    return scores


def finetune_main(argv: list[str] | None = None) -> int:
    from helpers.loop import accelerator

    args = _finetune_parser().parse_args(argv)
    profile = get_profile(args.profile)
    if args.epochs is not None:
        if args.epochs < 1:
            return _error(f"--epochs must be at least 1, got {args.epochs}")
        profile = with_overrides(profile, epochs=args.epochs)
    problem = _check_output_folder(args)
    if problem:
        return _error(problem)
    acc = accelerator(profile.bf16)
    if acc.is_main_process:
        print(f"processes: {acc.num_processes}", flush=True)
    from helpers.data import LABELS
    from helpers.heads import PREFIXES
    from helpers.models import load_encoder
    from helpers.training import finetune, recipe_for, save_finetuned

    prefix = PREFIXES.get(args.model, "")
    try:
        train, val, test = _review_splits(args, profile, prefix)
        model, tokenizer = load_encoder(args.model, num_labels=len(LABELS), seed=args.seed,
                                        profile=profile)
    except (ValueError, KeyError, OSError) as err:  # ModelUnavailableError is an OSError
        return _error(str(err))
    if acc.is_main_process:
        print(f"profile {profile.name}: {len(train)} training and {len(val)} validation reviews "
              f"({','.join(args.train_langs)}; domains {','.join(args.domains or ['all'])})",
              flush=True)
    recipe = recipe_for(args.model, profile)
    if args.epochs is not None:
        recipe.pop("epochs", None)  # --epochs wins (it is already in the profile)
    try:
        result = finetune(model, tokenizer, train, val, profile=profile, seed=args.seed,
                          output_dir=args.output / "training", resume=args.resume,
                          patience=args.patience, **recipe)
    except KeyboardInterrupt as stop:
        print(f"\n{stop or 'interrupted'}: rerun the same command with --resume to continue",
              file=sys.stderr)
        return 130
    except ValueError as err:  # --resume against a checkpoint of other settings
        return _error(str(err))
    if not acc.is_main_process:
        return 0
    bf16 = result.info["bf16"]  # score in the precision the model was trained in
    metrics = {"model": args.model, "profile": profile.name, "seed": args.seed, "recipe": recipe,
               "train_langs": args.train_langs, "domains": ",".join(args.domains or ["all"]),
               "train_examples": len(train), "steps": result.steps, "bf16": bf16,
               "best_step": result.best_step, "stopped_early": result.stopped_early,
               **_score_splits(result.model, tokenizer, {"validation": val, "test": test},
                               profile, args.seed, bf16)}
    from helpers.io import write_json

    write_json(args.output / "metrics.json", metrics)  # before the model's marker
    save_finetuned(result.model, tokenizer, args.output, max_seq_len=profile.max_seq_len,
                   labels=LABELS, prefix=prefix, bf16=bf16)
    print(f"saved the model and metrics.json to {args.output}")
    return 0


# --- predict ----------------------------------------------------------------------------------

class _BadLine(Exception):
    pass


def _parse_line(raw: bytes) -> dict | None:
    """The review on one input line; None for a blank line (skipped, as the data loader does)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadLine("not valid UTF-8") from None
    line = line.lstrip("\ufeff").rstrip("\r\n")  # a byte-order mark, as some editors write
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise _BadLine(f"malformed JSON: {err.msg} (column {err.colno})") from None
    except RecursionError:
        raise _BadLine("malformed JSON: nested too deeply") from None
    if not isinstance(record, dict):
        raise _BadLine(f"expected a JSON object, got {type(record).__name__}")
    if "text" not in record:
        raise _BadLine("no \"text\" field")
    text = record["text"]
    if not isinstance(text, str):
        raise _BadLine(f"\"text\" must be a string, got {type(text).__name__}")
    if not text.strip():
        raise _BadLine("\"text\" is empty")
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _BadLine("a lone surrogate (\\ud800-\\udfff) is not Unicode text") from None
    except RecursionError:
        raise _BadLine("malformed JSON: nested too deeply") from None
    return record


class _DamagedModel(Exception):
    pass


def _predict_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers predict",
        description="Label each review of a JSON Lines file. Every line needs a \"text\" field; "
                    "other fields are kept, and \"label\" and \"score\" (the probability of "
                    "the last label, positive) are added (an existing \"label\" is replaced).")
    parser.add_argument("--model", required=True, type=Path,
                        help="a directory written by `python -m helpers finetune`")
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                        help="at a bad input line: stop (nothing is written) or skip it")
    parser.add_argument("--profile", default=None, choices=list(PROFILES),
                        help="compute in this profile's precision (default: the precision the "
                             "model was trained in)")
    return parser


def _label_lines(args, labeller, out) -> tuple[int, int]:
    """Read, label and write the input in chunks; returns (written, skipped)."""
    chunk = args.batch_size * 16  # lines read at once; sorted by length inside a chunk
    written = skipped = 0
    records = []
    with open(args.input, "rb") as src:
        for number, raw in enumerate(src, start=1):
            try:
                record = _parse_line(raw)
            except _BadLine as err:
                print(f"{args.input}:{number}: {err}", file=sys.stderr)
                if args.on_error == "stop":
                    raise
                skipped += 1
                continue
            if record is None:
                continue
            records.append(record)
            if len(records) == chunk:
                written += labeller(records, out)
                records = []
    if records:
        written += labeller(records, out)
    return written, skipped


def _check_files(src: Path, dst: Path) -> str | None:
    """Why predict cannot read `src` or write `dst` (None when it can): the output is replaced
    by renaming a finished file over it, so it must be a new or a regular file, never the input."""
    if not src.is_file():
        return f"input file {src} does not exist"
    if dst.is_symlink():
        return f"--output {dst} is a symbolic link; give the path of a regular file"
    if dst.exists() and not dst.is_file():
        return f"--output {dst} exists and is not a regular file (a folder or a device)"
    if dst.exists() and os.path.samefile(src, dst):
        return f"--output {dst} is the input file; write the predictions to a new file"
    return None


def predict_main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from helpers.training import load_finetuned, predict

    args = _predict_parser().parse_args(argv)
    if args.batch_size < 1:
        return _error(f"--batch-size must be at least 1, got {args.batch_size}")
    problem = _check_files(args.input, args.output)
    if problem:
        return _error(problem)
    try:
        model, tokenizer, info = load_finetuned(args.model)
    except (OSError, ValueError) as err:
        return _error(str(err))
    bf16 = get_profile(args.profile).bf16 if args.profile else info["bf16"]
    if torch.cuda.is_available():
        model.cuda()

    def labeller(records, out):
        probs = predict(model, tokenizer, [info["prefix"] + r["text"] for r in records],
                        batch_size=args.batch_size, max_length=info["max_seq_len"], bf16=bf16)
        if not np.isfinite(probs).all():
            raise _DamagedModel
        for record, p in zip(records, probs):
            record["label"] = info["labels"][int(p.argmax())]
            record["score"] = round(float(p[-1]), 6)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
        return len(records)

    try:  # io.writing: a stopped or failed run leaves the output as it was
        with writing(args.output) as out:
            written, skipped = _label_lines(args, labeller, out)
    except _BadLine:
        print(f"stopped at the first bad line; nothing written to {args.output} "
              "(use --on-error skip to skip bad lines)", file=sys.stderr)
        return 1
    except _DamagedModel:
        return _error(f"the model in {args.model} gives non-finite probabilities (NaN or inf): its "
                      f"weights are damaged; fine-tune it again. Nothing written to {args.output}", 1)
    except KeyboardInterrupt:
        print(f"\ninterrupted; nothing written to {args.output}", file=sys.stderr)
        return 130
    if skipped:
        print(f"skipped {skipped} bad line(s)", file=sys.stderr)
    print(f"wrote {written} predictions to {args.output}")
    return 0


# --- pretrain ---------------------------------------------------------------------------------

def _pretrain_parser(langs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers pretrain",
        description="Pretrain the course's mini BERT from scratch on the English and Chinese "
                    "corpora with MLM + NSP (or MLM only); saves model and tokenizer.")
    add_profile_argument(parser)
    parser.add_argument("--output", type=Path, default=None,
                        help="directory for the model (default: build/checkpoints/mini-bert, or "
                             "mini-bert-mlm-only with --no-nsp); checkpoints go to OUTPUT/training")
    parser.add_argument("--no-nsp", action="store_true",
                        help="masked language modelling only (BertForMaskedLM, no NSP head)")
    parser.add_argument("--resume", action="store_true",
                        help="continue exactly from the checkpoint in OUTPUT/training")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps (default: the profile's pretrain_steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--langs", default=",".join(langs),
                        help="corpora to pretrain on, e.g. en or en,zh")
    return parser


def pretrain_main(argv: list[str] | None = None) -> int:
    from helpers.data import LANGS
    from helpers.loop import accelerator
    from helpers.pretraining import (RESULTS_FILE, checkpoint_path, pretrain_mini_bert,
                                     save_pretrained_model, summarize)
    from helpers.tokenization import course_tokenizer

    args = _pretrain_parser(LANGS).parse_args(argv)
    profile = get_profile(args.profile)
    if args.steps is not None:
        if args.steps < 1:
            return _error(f"--steps must be at least 1, got {args.steps}")
        profile = with_overrides(profile, pretrain_steps=args.steps)
    langs = [lang.strip() for lang in args.langs.split(",") if lang.strip()]
    unknown = [lang for lang in langs if lang not in LANGS]
    if unknown or not langs:
        return _error(f"unknown --langs {','.join(unknown) or '(none)'}; valid: {','.join(LANGS)}")
    nsp = not args.no_nsp
    output = args.output or checkpoint_path(nsp)
    acc = accelerator(profile.bf16)
    if acc.is_main_process:
        print(f"processes: {acc.num_processes}", flush=True)
    with acc.main_process_first():  # one process trains the tokenizer, the rest read it
        course_tokenizer(profile)
    try:
        result, tokenizer = pretrain_mini_bert(profile, nsp=nsp, output_dir=output / "training",
                                               max_steps=profile.pretrain_steps, seed=args.seed,
                                               resume=args.resume, langs=langs,
                                               progress=acc.is_main_process)
    except ValueError as err:  # e.g. --resume with other settings than the checkpoint's
        return _error(str(err))
    if not acc.is_main_process:
        return 0
    summary = dict(summarize(result), profile=profile.name, langs=langs, seed=args.seed,
                   processes=acc.num_processes)
    print(f"held-out MLM accuracy {summary['val_mlm_accuracy']:.3f} (unigram baseline "
          f"{summary['unigram_baseline']:.3f})" + (
              f", NSP accuracy {summary['val_nsp_accuracy']:.3f}" if nsp else "")
          + f"; {summary['tokens_per_s']:.0f} tokens/s over {summary['steps']} steps")
    save_pretrained_model(result.model, tokenizer, output, summary)
    print(f"saved the model, tokenizer and {RESULTS_FILE} to {output}")
    return 0


# --- bench ------------------------------------------------------------------------------------

def _positive(name):
    def parse(value):
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {value!r}")
        if number < 1:
            raise argparse.ArgumentTypeError(f"{name} must be at least 1, got {number}")
        return number
    return parse


def _bench_parser(model_sizes, tasks) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers bench",
        description="Training throughput of the course's loop and of transformers' Trainer on "
                    "random tokens: tokens/s, achieved FLOP/s and, on a known GPU, MFU.")
    add_profile_argument(parser)
    parser.add_argument("--model-size", choices=list(model_sizes), default=None,
                        help="tiny/mini: the smoke/cpu profile's mini BERT; base: BERT-base "
                             "(default: the profile's)")
    for flag, text in (("--seq-len", "tokens per sequence (default: the profile's pretraining "
                                     "length)"),
                       ("--batch-size", "sequences per step and process (default: the "
                                        "profile's pretraining batch size)"),
                       ("--steps", "timed optimizer steps"),
                       ("--warmup", "untimed steps before the timed ones"),
                       ("--threads", "CPU threads for torch (default: one with the smoke profile "
                                     "or when other jobs keep the cores busy, else torch's)")):
        parser.add_argument(flag, type=_positive(flag), default=None, help=text)
    parser.add_argument("--tasks", default=",".join(tasks),
                        help="comma-separated: mlm, classification")
    parser.add_argument("--no-trainer", action="store_true", help="time only the course's loop")
    parser.add_argument("--attn", choices=("sdpa", "eager"), default=None,
                        help="attention implementation (default: transformers' choice, sdpa)")
    return parser


def bench_main(argv: list[str] | None = None) -> int:
    import torch

    from helpers import bench

    args = _bench_parser(bench.MODEL_SIZES, bench.TASKS).parse_args(argv)
    profile = get_profile(args.profile)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if set(tasks) - set(bench.TASKS) or not tasks:
        return _error(f"--tasks {args.tasks!r}: valid tasks are {', '.join(bench.TASKS)}")
    defaults = bench.BENCH_DEFAULTS[profile.name]
    size = args.model_size or defaults["model_size"]
    sizes = dict(seq_len=args.seq_len or profile.pretrain_seq_len,
                 batch_size=args.batch_size or profile.pretrain_batch_size,
                 steps=args.steps or defaults["steps"], warmup=args.warmup or defaults["warmup"])
    config = bench.bert_config(size, num_labels=2)
    if sizes["seq_len"] > config.max_position_embeddings:
        return _error(f"--seq-len {sizes['seq_len']} exceeds the {size} model's "
                      f"{config.max_position_embeddings} positions")
    if args.threads:
        torch.set_num_threads(args.threads)
    elif not torch.cuda.is_available() and (profile.name == "smoke" or bench.busy()):
        # Threads of one process wait for each other at every operation; on busy cores each
        # wait can last a time slice, and a tiny model gains nothing from a second thread.
        torch.set_num_threads(1)
    main = int(os.environ.get("RANK", "0")) == 0
    if main:
        print(bench.describe_run(config, size, tasks, profile, **sizes))
    rows = bench.bench(size, **sizes, profile=profile, tasks=tasks,
                       loops=("ours",) if args.no_trainer else bench.LOOPS,
                       attn_implementation=args.attn)
    if main:
        print()
        print(bench.format_table(rows, gpu=torch.cuda.is_available()))
        if not torch.cuda.is_available():
            print("\nCPU: tokens/s and GFLOP/s only; MFU needs a peak, and the table has GPUs.")
    return 0
