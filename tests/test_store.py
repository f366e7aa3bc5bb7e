"""The store's guarantees through the CLI: atomic publish, one result from concurrent conversions, safe names,
no pickle, no remote code, and the hub path against a hub look-alike on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aipc.store import store
from tests.conftest import run_cli
from tests.hub_server import FakeHub


def _forget(*names: str) -> None:
    """Start from a store without these models (AIPC_TEST_HOME may keep a store between runs)."""
    import shutil

    for name in names:
        if store.find(name):
            store.remove(name)
    shutil.rmtree(Path(os.environ["AIPC_HOME"]) / "downloads", ignore_errors=True)


def _convert_cmd(source: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "aipc",
        "convert",
        str(source),
        "--to",
        "onnx",
        "--precision",
        "fp32",
        "--name",
        name,
        *extra,
    ]


def test_a_killed_conversion_leaves_nothing_visible(phi3_fixtures):
    _forget("killed")
    models = Path(os.environ["AIPC_HOME"]) / "models" / "killed"
    proc = subprocess.Popen(
        _convert_cmd(phi3_fixtures["tiny"], "killed"), stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(models.glob(".staging-*")):
        time.sleep(0.05)
    assert any(models.glob(".staging-*")), "the conversion never started writing"
    os.killpg(proc.pid, signal.SIGKILL)  # the tool subprocess too
    proc.wait(30)
    assert store.find("killed") == []
    listed = json.loads(run_cli("list", "--json").stdout)
    assert "killed" not in {v["name"] for v in listed}
    result = run_cli("run", "killed@onnx-fp32", "hi")
    assert result.returncode == 2 and "no model 'killed@onnx-fp32' in the store" in result.stderr
    # A later conversion of the same model succeeds over the leftovers.
    again = subprocess.run(_convert_cmd(phi3_fixtures["tiny"], "killed"), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert [v.ref for v in store.find("killed")] == ["killed@onnx-fp32"]


def test_two_concurrent_conversions_give_one_model(phi3_fixtures):
    _forget("twice")
    procs = [
        subprocess.Popen(
            _convert_cmd(phi3_fixtures["tiny"], "twice"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    variants = store.find("twice")
    assert [v.ref for v in variants] == ["twice@onnx-fp32"]
    folder = variants[0].path.parent
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["onnx-fp32"]
    assert not list(folder.glob(".staging-*"))


@pytest.mark.parametrize("bad", ["../escape", "a/b", "/abs", "..", "x..y", "name with space"])
def test_names_that_would_escape_the_store_are_refused(phi3_fixtures, bad):
    result = run_cli("convert", str(phi3_fixtures["tiny"]), "--to", "onnx", "--name", bad)
    assert result.returncode == 2
    assert "invalid model name" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_cli("rm", bad)
    assert result.returncode == 2 and "invalid model name" in result.stderr


def test_pickle_weights_are_refused_unless_allowed(phi3_fixtures, tmp_path):
    _forget("pickled")
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in phi3_fixtures["tiny"].iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(phi3_fixtures["tiny"] / "model.safetensors"), folder / "pytorch_model.bin")
    refused = run_cli("convert", str(folder), "--to", "onnx", "--precision", "fp32", "--name", "pickled")
    assert refused.returncode == 2
    assert "pickle" in refused.stderr and "--allow-pickle" in refused.stderr
    assert store.find("pickled") == []
    allowed = run_cli(
        "convert",
        str(folder),
        "--to",
        "onnx",
        "--precision",
        "fp32",
        "--name",
        "pickled",
        "--allow-pickle",
        timeout=300,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert store.find("pickled")


def test_remote_code_configs_are_refused(phi3_fixtures, tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    for f in phi3_fixtures["tiny"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="my_custom_lm", auto_map={"AutoModelForCausalLM": "modeling_custom.CustomLM"})
    (folder / "config.json").write_text(json.dumps(config))
    result = run_cli("convert", str(folder), "--to", "onnx", "--name", "remote")
    assert result.returncode == 2
    assert "remote code" in result.stderr and "never runs code" in result.stderr
    # Phi-3's own config carries a stale auto_map; a native architecture is accepted regardless.
    config.update(model_type="phi3")
    (folder / "config.json").write_text(json.dumps(config))
    from aipc.convert.sources import check_no_remote_code

    check_no_remote_code(config, folder)


def test_show_and_list_describe_a_model(phi3_fixtures):
    run_cli(
        "convert", str(phi3_fixtures["tiny"]), "--to", "onnx", "--precision", "fp32", "--name", "shown", timeout=300
    )
    shown = run_cli("show", "shown", "--json")
    assert shown.returncode == 0, shown.stderr
    [manifest] = json.loads(shown.stdout)
    for key in ("source", "recipe", "backend", "precision", "size_bytes", "created", "tools", "files"):
        assert key in manifest
    text = run_cli("show", "shown").stdout
    assert "SYNTHETIC" in text and "onnxruntime" in text
    table = run_cli("list").stdout
    assert "shown (synthetic)" in table and "onnx-fp32" in table


def test_hub_source_through_a_local_hub(phi3_fixtures):
    _forget("phi3:mini")
    repos = {"microsoft/Phi-3-mini-4k-instruct": phi3_fixtures["tiny"]}
    with FakeHub(repos) as hub:
        env = {"HF_ENDPOINT": hub.url}
        result = run_cli("convert", "phi3:mini", "--to", "onnx", "--precision", "fp32", env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        assert any("/resolve/" in r and r.endswith("model.safetensors") for r in hub.requests)
        [manifest] = json.loads(run_cli("show", "phi3:mini", "--json").stdout)
        assert manifest["source"]["kind"] == "hub"
        assert manifest["source"]["repo"] == "microsoft/Phi-3-mini-4k-instruct"
        assert manifest["source"]["commit"] == hub.commits["microsoft/Phi-3-mini-4k-instruct"]
        ran = run_cli("run", "phi3:mini", "--max-tokens", "4", "hello", env=env)
        assert ran.returncode == 0, ran.stderr
    # Offline again: the stored model still runs, without the hub.
    ran = run_cli("run", "phi3:mini", "--max-tokens", "4", "hello")
    assert ran.returncode == 0, ran.stderr


def test_pull_takes_a_preconverted_openvino_repository(phi3_fixtures):
    from aipc.convert.api import convert

    _forget("phi3.5:mini")
    exported = convert(str(phi3_fixtures["tiny"]), "openvino", "int4", name="fx-tiny")
    repos = {"OpenVINO/Phi-3.5-mini-instruct-int4-ov": exported.path}
    with FakeHub(repos) as hub:
        result = run_cli("pull", "phi3.5:mini", env={"HF_ENDPOINT": hub.url}, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "phi3.5:mini@openvino-int4" in result.stdout
        assert not any("microsoft/" in r for r in hub.requests)  # no original checkpoint was needed
    [manifest] = json.loads(run_cli("show", "phi3.5:mini", "--json").stdout)
    assert manifest["recipe"] == {"pre-converted": "OpenVINO/Phi-3.5-mini-instruct-int4-ov"}
    ran = run_cli("run", "phi3.5:mini", "--max-tokens", "4", "hello")
    assert ran.returncode == 0, ran.stderr


def test_pull_refuses_what_is_not_in_the_catalog():
    result = run_cli("pull", "someone/some-model")
    assert result.returncode == 2 and "pull takes a catalog name" in result.stderr
    offline = run_cli("pull", "phi4:mini")
    assert offline.returncode == 2 and "cannot be reached" in offline.stderr
