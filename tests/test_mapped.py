"""Releasing the pages of weights a runtime maps and stops reading (`aipc.backends.mapped`): the mechanism on
files this test maps itself, and OpenVINO's IR weights after the first inference, when its CPU plugin has
repacked them."""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

import pytest

from aipc.backends import mapped

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="releasing mapped pages is Linux only")

PAGE = mmap.PAGESIZE
SIZE = 4 * 1024 * 1024


def resident(prefix: str) -> int:
    """Resident bytes of this process's mappings of files under `prefix` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                inside = len(head) >= 6 and head[5].startswith(prefix)
            elif inside and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


def mapped_file(folder: Path, name: str, access: int):
    path = folder / name
    path.write_bytes(bytes(range(256)) * (SIZE // 256))
    with open(path, "r+b") as f:
        view = mmap.mmap(f.fileno(), 0, access=access)
    total = sum(view[i] for i in range(0, SIZE, PAGE))  # touch every page
    return view, total


def test_release_drops_shared_read_only_pages_and_nothing_else(tmp_path):
    shared, total = mapped_file(tmp_path, "shared.bin", mmap.ACCESS_READ)
    written, _ = mapped_file(tmp_path, "written.bin", mmap.ACCESS_WRITE)
    private, _ = mapped_file(tmp_path, "private.bin", mmap.ACCESS_COPY)
    written[0] = private[0] = 7  # data that exists only in these mappings (the private one's copy on write)
    prefix = str(tmp_path.resolve()) + os.sep
    before = {name: resident(prefix + name) for name in ("shared.bin", "written.bin", "private.bin")}
    assert before["shared.bin"] >= SIZE * 0.9

    assert mapped.release(prefix) == SIZE  # only the shared read-only mapping is covered

    assert resident(prefix + "shared.bin") <= 2 * PAGE
    assert resident(prefix + "written.bin") == before["written.bin"] > 0
    assert resident(prefix + "private.bin") == before["private.bin"] > 0
    assert written[0] == private[0] == 7
    assert sum(shared[i] for i in range(0, SIZE, PAGE)) == total  # read again from the file, unchanged
    for view in (shared, written, private):
        view.close()


def test_settling_releases_once_per_opening(tmp_path):
    view, _ = mapped_file(tmp_path, "weights.bin", mmap.ACCESS_READ)
    prefix = str(tmp_path.resolve()) + os.sep
    weights = mapped.MappedWeights(tmp_path)
    with weights.settling(), weights.settling():  # nested: the outer one releases
        sum(view[i] for i in range(0, SIZE, PAGE))
    assert resident(prefix) <= 2 * PAGE

    sum(view[i] for i in range(0, SIZE, PAGE))
    with weights.settling():  # nothing opened since: later inferences run as they are
        pass
    assert resident(prefix) >= SIZE * 0.9

    weights.opened()
    with weights.settling():
        pass
    assert resident(prefix) <= 2 * PAGE
    view.close()


def test_openvino_holds_its_weights_once_after_the_first_inference():
    """The compiled model reads the IR's weights file while it compiles and repacks them on its first inference;
    after that, the file's pages are no longer resident, and answers do not change (pages read later are mapped
    again)."""
    import aipc

    with aipc.load(backend="openvino", device="cpu") as model:
        folder = Path(model.info.path).resolve()
        weights = sum(f.stat().st_size for f in folder.glob("*.bin"))
        first = model.generate("What is the capital of France?", temperature=0, max_tokens=12)
        held = resident(str(folder) + os.sep)
        again = model.generate("What is the capital of France?", temperature=0, max_tokens=12)
    assert weights > 50 * 2**20
    assert held <= 0.05 * weights, f"{held / 2**20:.0f} MiB of {weights / 2**20:.0f} MiB of weights still mapped"
    assert again == first


def test_the_release_keeps_the_data_of_memory_that_became_another_mapping():
    """The regions come from /proc/self/maps while the runtime maps and unmaps memory; one may be the runtime's
    own anonymous memory by the time of the call. The advice used while the runtime runs keeps such memory's
    data, where MADV_DONTNEED (used then at first) zeroed it."""
    import ctypes

    madvise = mapped._libc_madvise()
    regions = {}
    for advice in (mapped._MADV_PAGEOUT, mapped._MADV_DONTNEED):
        memory = mmap.mmap(-1, SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        memory[:] = bytes(range(256)) * (SIZE // 256)
        address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
        assert madvise(address, SIZE, advice) == 0
        regions[advice] = memory[:PAGE]
    assert regions[mapped._MADV_PAGEOUT] == bytes(range(256)) * (PAGE // 256)  # kept
    assert regions[mapped._MADV_DONTNEED] == bytes(PAGE)  # zeroed
