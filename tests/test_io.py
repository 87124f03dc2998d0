"""Writes that are whole or not at all, also when two processes write the same thing."""
import multiprocessing
import time

import pytest

from helpers.io import (building, latest_complete, read_json, scratch_for, swap_in, write_atomic,
                        writing)


def test_a_failed_write_leaves_the_old_file_and_no_scratch(tmp_path):
    target = write_atomic(tmp_path / "out.jsonl", "old\n")
    with pytest.raises(RuntimeError):
        with writing(target) as handle:
            handle.write("half of the new\n")
            raise RuntimeError("stopped")
    assert target.read_text() == "old\n" and list(tmp_path.iterdir()) == [target]
    with writing(target) as handle:
        handle.write("new\n")
    assert target.read_text() == "new\n" and list(tmp_path.iterdir()) == [target]


def test_a_swap_cut_short_leaves_the_old_version_where_it_is_looked_for(tmp_path):
    target = tmp_path / "checkpoint"
    with building(target) as scratch:
        (scratch / "step").write_text("1")
    scratch = scratch_for(target)
    (scratch / "step").write_text("2")
    target.rename(target.with_name("checkpoint.old"))  # the first of swap_in's two renames
    found = [p for p in latest_complete(target) if (p / "step").exists()]
    assert [p.name for p in found] == ["checkpoint.old"]
    swap_in(scratch, target)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert (target / "step").read_text() == "2" and left == [".checkpoint.lock", "checkpoint"]


def _build(target, name):
    with building(target) as scratch:
        for i in range(5):
            (scratch / f"part{i}").write_text(name)
            time.sleep(0.02)
    write_atomic(target.parent / f"{name}.done", "ok")


def test_two_processes_building_the_same_folder_take_turns(tmp_path):
    """Two notebooks training the course tokenizer at once, say: without the lock one clears the
    other's scratch folder while it writes."""
    target = tmp_path / "tokenizer"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_build, args=(target, name)) for name in ("a", "b", "c")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    contents = {p.read_text() for p in target.iterdir()}
    assert len(contents) == 1 and len(list(target.iterdir())) == 5  # one whole build, not a mix
    assert read_json(tmp_path / "missing.json", {}) == {}
