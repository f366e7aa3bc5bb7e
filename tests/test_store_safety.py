"""The store never acts outside AIPC_HOME and never loses track of what it holds: symbolic links are listed as
damaged and removed as links (their targets survive), a variant whose manifest is corrupt is listed as damaged
and removable, an AIPC_HOME that cannot be a store is one line, and litter from killed writers is reclaimed
by lock (a live writer's folders survive), through `aipc prune` and at the next store write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aipc.store import store
from tests.conftest import run_cli


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A store of its own for each test (the CLI subprocesses get it through the environment too)."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("AIPC_HOME", str(path))
    return path


def make_variant(folder: Path, name: str, variant: str = "gguf-q4_0") -> Path:
    """A published variant as `convert` leaves one: its files, a manifest, the `.complete` marker."""
    folder.mkdir(parents=True)
    (folder / "model.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    store.write_manifest(folder, {"name": name, "variant": variant, "format": "gguf", "precision": "q4_0"})
    (folder / ".complete").write_text("ok\n")
    return folder


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_symlinked_model_folder_is_listed_as_damaged_and_rm_removes_only_the_link(home, tmp_path):
    outside = tmp_path / "precious"
    make_variant(outside / "gguf-q4_0", "linked")
    (outside / "keep-me.txt").write_text("not aipc's")
    (home / "models").mkdir()
    (home / "models" / "linked").symlink_to(outside, target_is_directory=True)

    listed = run_cli("list")
    assert listed.returncode == 0, listed.stderr
    assert "damaged: linked: a symbolic link to" in listed.stdout and "aipc rm linked" in listed.stdout
    [entry] = [e for e in json.loads(run_cli("list", "--json").stdout) if e.get("damaged")]  # the embedded aside
    assert entry["ref"] == "linked" and "symbolic link" in entry["damaged"]
    refused = run_cli("run", "linked", "hi")
    assert refused.returncode == 2 and "linked is damaged" in one_line(refused)
    converting = run_cli("convert", "smollm2:135m", "--to", "gguf", "--precision", "q8_0", "--name", "linked")
    assert converting.returncode == 2 and "does not write through links" in one_line(converting)

    removed = run_cli("rm", "linked")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == "removed linked"
    assert not os.path.lexists(home / "models" / "linked")
    assert (outside / "gguf-q4_0" / "model.gguf").is_file() and (outside / "keep-me.txt").is_file()


def test_a_symlinked_variant_folder_is_removed_as_a_link(home, tmp_path):
    outside = make_variant(tmp_path / "elsewhere", "mixed")
    make_variant(home / "models" / "mixed" / "gguf-q8_0", "mixed", "gguf-q8_0")
    (home / "models" / "mixed" / "gguf-q4_0").symlink_to(outside, target_is_directory=True)
    assert [v.ref for v in store.list_variants()] == ["mixed@gguf-q8_0"]  # never followed, never run
    [damaged] = [v for v in store.list_variants(damaged=True) if v.problem]
    assert damaged.ref == "mixed@gguf-q4_0" and "symbolic link" in damaged.problem
    assert run_cli("rm", "mixed").returncode == 0
    assert not (home / "models" / "mixed").exists()
    assert (outside / "model.gguf").is_file()


def test_a_variant_holding_a_link_out_of_its_folder_is_damaged(home, tmp_path):
    secret = tmp_path / "secret.gguf"
    secret.write_bytes(b"GGUF")
    folder = make_variant(home / "models" / "sneaky" / "gguf-q4_0", "sneaky")
    (folder / "model.gguf").unlink()
    (folder / "model.gguf").symlink_to(secret)
    assert store.find("sneaky") == []
    [v] = store.list_variants(damaged=True)
    assert "link out of its folder: model.gguf ->" in v.problem
    assert run_cli("rm", "sneaky@gguf-q4_0").returncode == 0
    assert secret.read_bytes() == b"GGUF"


@pytest.mark.parametrize(
    ("manifest", "why"),
    [("{not json", "is not readable JSON"), ("[1, 2]", "is not a JSON object"), (None, "is missing")],
)
def test_a_variant_with_a_corrupt_manifest_is_listed_as_damaged_and_removable(home, manifest, why):
    make_variant(home / "models" / "broken" / "gguf-q8_0", "broken", "gguf-q8_0")
    bad = make_variant(home / "models" / "broken" / "gguf-q4_0", "broken")
    if manifest is None:
        (bad / store.MANIFEST).unlink()
    else:
        (bad / store.MANIFEST).write_text(manifest)
    listed = run_cli("list")
    assert listed.returncode == 0 and f"damaged: broken@gguf-q4_0: its manifest (aipc-manifest.json) {why}" in (
        listed.stdout
    )
    assert "gguf-q8_0" in listed.stdout  # the healthy variant is still listed
    shown = run_cli("show", "broken@gguf-q4_0")
    assert shown.returncode == 0 and "DAMAGED" in shown.stdout
    assert run_cli("rm", "broken@gguf-q4_0").stdout.strip() == "removed broken@gguf-q4_0"
    assert not bad.exists() and [v.ref for v in store.list_variants(damaged=True)] == ["broken@gguf-q8_0"]
    bad = make_variant(home / "models" / "broken" / "gguf-q4_0", "broken")
    (bad / store.MANIFEST).write_text("{")
    removed = run_cli("rm", "broken").stdout.splitlines()
    assert sorted(removed) == ["removed broken@gguf-q4_0", "removed broken@gguf-q8_0"]
    assert not (home / "models" / "broken").exists()


def test_aipc_home_that_is_a_file_is_one_line(tmp_path):
    not_a_folder = tmp_path / "home-file"
    not_a_folder.write_text("x")
    for args in (["list"], ["run", "hi"], ["prune"]):
        result = run_cli(*args, env={"AIPC_HOME": str(not_a_folder)})
        assert result.returncode == 2
        assert (
            one_line(result)
            == f"aipc: error: AIPC_HOME={not_a_folder} is a file, not a folder: point AIPC_HOME at a folder"
        )


def test_aipc_home_that_cannot_be_written_is_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("needs to mount a read-only tmpfs (root): cannot here")
    try:
        env = {"AIPC_HOME": str(ro / "store")}
        result = run_cli("convert", "smollm2:135m", "--to", "gguf", "--precision", "q8_0", env=env)
        assert result.returncode == 2
        line = one_line(result)
        assert f"cannot write {ro / 'store'}" in line and "Read-only file system" in line and "AIPC_HOME" in line
        # `run` needs the store only for OpenVINO's converted copy: that backend says why, the answer still comes.
        result = run_cli("run", "--backend", "openvino", "--device", "cpu", "hi", env=env)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "Read-only file system" in result.stderr.strip().splitlines()[-1]
    finally:
        subprocess.run(["umount", str(ro)], check=False)


# --- litter -------------------------------------------------------------------------------------------------
_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from aipc.store.publish import scratch, staged
    with staged(Path(sys.argv[1])) as tmp, scratch(Path(sys.argv[2]), "convert") as work:
        (tmp / "half.bin").write_bytes(b"x" * 1000)
        (work / "hf.bin").write_bytes(b"y" * 2000)
        print(tmp.name, work.name, flush=True)
        time.sleep(float(sys.argv[3]))
    """
)


def _writer(target: Path, work: Path, seconds: float) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(target), str(work), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    staging, scratch = proc.stdout.readline().split()
    return proc, staging, scratch


def test_prune_frees_a_killed_writers_litter_and_never_a_live_one(home):
    target = home / "models" / "m" / "gguf-q4_0"
    killed, k_staging, k_scratch = _writer(target, home / "tmp", 60)
    live, l_staging, l_scratch = _writer(home / "cache" / "gguf-openvino" / "x-compressed", home / "tmp", 60)
    killed.kill()  # after the live writer started: its own start reclaims litter, and this was alive then
    killed.wait(10)
    legacy = home / "tmp" / "convert-legacy"  # from an aipc that did not lock scratch folders
    legacy.mkdir()
    (legacy / "model.safetensors").write_bytes(b"z" * 5000)
    try:
        dry = run_cli("prune", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert k_staging in dry.stdout and k_scratch in dry.stdout and "convert-legacy" in dry.stdout
        assert l_staging not in dry.stdout and l_scratch not in dry.stdout
        assert "would free 8.0 KB" in dry.stdout.splitlines()[-1]  # 1000 + 2000 + 5000 bytes
        assert (target.parent / k_staging).is_dir()  # a dry run removes nothing

        freed = run_cli("prune")
        assert freed.returncode == 0 and "freed 8.0 KB" in freed.stdout.splitlines()[-1], freed.stdout
        assert not (target.parent / k_staging).exists() and not (home / "tmp" / k_scratch).exists()
        assert not legacy.exists()
        assert (home / "cache" / "gguf-openvino" / l_staging / "half.bin").is_file()  # alive: kept
        assert (home / "tmp" / l_scratch / "hf.bin").is_file()
        assert run_cli("prune", "--dry-run").stdout.strip() == "Nothing to prune."
    finally:
        live.kill()
        live.wait(10)


def test_prune_frees_uploads_no_model_was_made_from_after_an_hour(home):
    blobs = home / "blobs"
    blobs.mkdir()
    old, partial, fresh = blobs / ("sha256-" + "a" * 64), blobs / ".partial-x", blobs / ("sha256-" + "b" * 64)
    for path, size in ((old, 3000), (partial, 1000), (fresh, 500)):
        path.write_bytes(b"u" * size)
    hours_ago = time.time() - 2 * 3600
    for path in (old, partial):
        os.utime(path, (hours_ago, hours_ago))
    freed = run_cli("prune")
    assert freed.returncode == 0 and "freed 4.0 KB" in freed.stdout.splitlines()[-1], freed.stdout
    assert "an upload no model was made from" in freed.stdout
    assert not old.exists() and not partial.exists() and fresh.is_file()  # an upload a create may still name


def test_the_next_store_write_reclaims_litter(home):
    from aipc.store.publish import staged

    killed, staging, scratch = _writer(home / "models" / "m" / "gguf-q4_0", home / "tmp", 60)
    killed.kill()
    killed.wait(10)
    with staged(home / "cache" / "gguf-openvino" / "other") as tmp:
        (tmp / "f").write_text("new")
    assert not (home / "models" / "m" / staging).exists() and not (home / "tmp" / scratch).exists()
    assert (home / "cache" / "gguf-openvino" / "other" / "f").read_text() == "new"


def test_a_writer_that_finishes_leaves_no_lock_or_scratch_behind(home):
    proc, _, _ = _writer(home / "models" / "m" / "gguf-q4_0", home / "tmp", 0)
    assert proc.wait(30) == 0
    assert sorted(p.name for p in (home / "tmp").iterdir()) == []
    assert (home / "models" / "m" / "gguf-q4_0" / "half.bin").is_file()
