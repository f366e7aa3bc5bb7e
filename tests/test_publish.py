import multiprocessing
import time

import pytest

from aipc.store.publish import is_published, staged


def test_failure_leaves_nothing_visible(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError), staged(target) as tmp:
        (tmp / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("killed midway")
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_publish_then_reuse(tmp_path):
    target = tmp_path / "model"
    with staged(target) as tmp:
        (tmp / "w.bin").write_bytes(b"1")
    assert is_published(target) and (target / "w.bin").read_bytes() == b"1"
    with staged(target) as tmp:
        assert tmp is None  # already there: nothing to do


def _build(target: str, marker: str) -> None:
    from pathlib import Path

    with staged(Path(target)) as tmp:
        if tmp is not None:
            time.sleep(0.5)
            (tmp / "who").write_text(marker)


def test_two_processes_give_one_result(tmp_path):
    target = tmp_path / "model"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_build, args=(str(target), str(i))) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert is_published(target)
    assert (target / "who").read_text() in ("0", "1")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["model"]


def test_incomplete_leftover_is_replaced(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "junk").write_text("from a crash")
    assert not is_published(target)
    with staged(target) as tmp:
        (tmp / "good").write_text("ok")
    assert is_published(target) and not (target / "junk").exists()
