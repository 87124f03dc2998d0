import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import config
from helpers.runtime import SETTINGS

ROOT = Path(__file__).resolve().parent.parent


def test_profiles_have_the_same_knobs_and_sizes_grow():
    smoke, cpu, gpu = (config.get_profile(n) for n in ("smoke", "cpu", "gpu"))
    assert smoke.to_dict().keys() == cpu.to_dict().keys() == gpu.to_dict().keys()
    assert smoke.pretrain_steps < cpu.pretrain_steps < gpu.pretrain_steps
    assert smoke.mini_bert["hidden_size"] < cpu.mini_bert["hidden_size"] <= gpu.mini_bert["hidden_size"]
    assert smoke.max_train_examples is not None and cpu.max_train_examples is None


def test_profile_from_environment_and_case(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "CPU")
    assert config.get_profile().name == "cpu"
    monkeypatch.delenv("COURSE_PROFILE")
    expected = "gpu" if torch.cuda.is_available() else "cpu"
    assert config.get_profile().name == expected


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(config.UnknownProfileError, match="smoke, cpu, gpu"):
        config.get_profile("bogus")


def parse_profile(argv, env, monkeypatch):
    import argparse

    if env is None:
        monkeypatch.delenv("COURSE_PROFILE", raising=False)
    else:
        monkeypatch.setenv("COURSE_PROFILE", env)
    parser = argparse.ArgumentParser()
    config.add_profile_argument(parser)
    return parser.parse_args(argv).profile


@pytest.mark.parametrize("argv, env, expected", [
    ([], None, None), (["--profile", "CPU"], None, "cpu"), ([], "Smoke", "smoke"),
    (["--profile", "gpu"], "smoke", "gpu"),  # the flag wins over the environment
])
def test_profile_argument(argv, env, expected, monkeypatch):
    assert parse_profile(argv, env, monkeypatch) == expected


@pytest.mark.parametrize("argv, env", [(["--profile", "laptop"], None), ([], "laptop")])
def test_profile_argument_refuses_an_unknown_name(argv, env, monkeypatch, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_profile(argv, env, monkeypatch)
    assert stop.value.code == 2
    assert "unknown profile 'laptop'; valid profiles: smoke, cpu, gpu" in capsys.readouterr().err


def test_make_refuses_a_bogus_profile_at_once():
    env = dict(os.environ, COURSE_PROFILE="bogus")
    run = subprocess.run(["make", "-s", "course"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0
    lines = [l for l in run.stderr.splitlines() if l.strip() and not l.startswith("make")]
    assert lines == ["error: unknown profile 'bogus'; valid profiles: smoke, cpu, gpu"], run.stderr


def test_set_seed_repeats_python_numpy_torch():
    import random

    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    config.set_seed(123)
    first = draw()
    config.set_seed(123)
    assert draw() == first
    config.set_seed(124)
    assert draw() != first


def test_record_merges_and_survives(tmp_path, monkeypatch):
    monkeypatch.setattr(SETTINGS, "build", tmp_path)
    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    config.record("99_demo", "smoke", accuracy=np.float32(0.5), curve=np.array([1, 2]))
    config.record("99_demo", "smoke", f1=torch.tensor(0.25))
    data = json.loads((tmp_path / "results.json").read_text())
    entry = data["notebooks"]["99_demo"]
    assert entry["results"] == {"accuracy": 0.5, "curve": [1, 2], "f1": 0.25}
    assert entry["profile"] == "smoke"


def _record_many(worker: int) -> None:
    for i in range(25):
        config.record(f"9{worker}_demo", "smoke", **{f"value_{i}": i})


def test_notebooks_recording_at_once_keep_every_value(tmp_path, monkeypatch):
    """Two notebooks open at once (or a notebook and a command) write results.json together:
    each update is a read-modify-write, and without the lock one overwrites the other's."""
    import multiprocessing

    monkeypatch.setattr(SETTINGS, "build", tmp_path)
    workers = [multiprocessing.get_context("fork").Process(target=_record_many, args=(w,))
               for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    notebooks = json.loads((tmp_path / "results.json").read_text())["notebooks"]
    assert {name: len(entry["results"]) for name, entry in notebooks.items()} == {
        f"9{w}_demo": 25 for w in range(4)}


def test_device_is_a_torch_device():
    assert isinstance(config.get_device(), torch.device)


def test_hub_check_never_hangs_offline(monkeypatch):
    monkeypatch.setattr(SETTINGS, "offline", True)
    assert config.hub_reachable() is False


def test_relative_build_dir_is_relative_to_the_repository(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for field in ("build", "cache", "prefer_hub", "offline"):  # restored after the test
        monkeypatch.setattr(SETTINGS, field, getattr(SETTINGS, field))
    config.read_environment({"COURSE_BUILD_DIR": "build/smoke", "COURSE_PREFER_HUB": "yes"})
    assert config.build_dir() == ROOT / "build" / "smoke"
    assert config.SETTINGS.prefer_hub and not config.SETTINGS.offline


def test_mini_bert_takes_its_own_finetuning_recipe():
    for profile in config.PROFILES.values():
        recipe = profile.mini_bert_finetuning()
        assert recipe["freeze_embeddings"] is False
        # a small model trained from scratch needs a larger rate than the pretrained encoders
        assert recipe["learning_rate"] > profile.learning_rate
        assert recipe["epochs"] >= profile.epochs


def test_native_bf16_reads_the_cpu_instructions(monkeypatch):
    # bf16 autocast only pays where the chip has bf16 instructions; elsewhere it is emulated
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert config.native_bf16("cpu") is True
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert config.native_bf16("cpu") is True
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "avx2": True})
    assert config.native_bf16("cpu") is False

    def cannot_tell():
        raise RuntimeError("no cpuinfo")

    monkeypatch.setattr(torch.cpu, "get_capabilities", cannot_tell)
    assert config.native_bf16("cpu") is False
    assert config.native_bf16("mps") is False
    if not torch.cuda.is_available():
        assert config.native_bf16("cuda") is False


def _resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's (Linux)")
def test_release_memory_hands_freed_heap_back():
    from helpers.config import release_memory

    # 3,000 blocks of 64 KB (below glibc's mmap threshold, so they live on the heap); keeping
    # every tenth alive leaves holes that plain free() cannot return to the system
    blocks = [torch.empty(16 * 1024, dtype=torch.float32).fill_(1.0) for _ in range(3000)]
    kept = blocks[::10]
    del blocks
    before = _resident_mb()
    release_memory()
    after = _resident_mb()
    assert before - after > 100, f"resident {before:.0f} MB -> {after:.0f} MB"
    assert all(float(b[0]) == 1.0 for b in kept)  # live data untouched
