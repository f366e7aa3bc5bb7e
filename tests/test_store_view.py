"""The store as users see it: the embedded model listed and shown on a fresh store, derived caches counted,
attributed, removed with their model and pruned when nothing uses them; cp and create (Modelfiles)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aipc.store import caches
from aipc.store.resolve import resolve
from tests.conftest import PARIS_QUESTION, run_cli


@pytest.fixture
def fresh(tmp_path) -> dict[str, str]:
    """An empty store of its own."""
    return {"AIPC_HOME": str(tmp_path / "home")}


def test_a_fresh_store_lists_and_shows_the_embedded_model(fresh):
    listed = run_cli("list", env=fresh)
    assert listed.returncode == 0, listed.stderr
    assert "No models" not in listed.stdout
    [row] = [ln for ln in listed.stdout.splitlines() if ln.startswith("smollm2:135m")]
    assert row.split()[:4] == ["smollm2:135m", "embedded", "any", "q4_1"] and "embedded" in row.split()[-1]
    [entry] = json.loads(run_cli("list", "--json", env=fresh).stdout)
    gguf = resolve(None).path
    assert entry["ref"] == "smollm2:135m@embedded" and entry["embedded"] and entry["size_bytes"] == gguf.stat().st_size

    shown = run_cli("show", "smollm2:135m", env=fresh)
    assert shown.returncode == 0, shown.stderr
    facts = dict(ln.split(None, 1) for ln in shown.stdout.splitlines()[2:8] if ln.strip())
    assert facts["architecture"].strip() == "llama" and facts["quantization"].strip() == "q4_1"
    assert "context length    8192" in shown.stdout and "parameters        135M" in shown.stdout
    assert "apache-2.0" in shown.stdout and "temperature" in shown.stdout
    template = run_cli("show", "smollm2", "--template", env=fresh).stdout
    assert template.startswith("{% for message in messages %}") and "<|im_start|>" in template
    assert run_cli("show", "smollm2", "--license", env=fresh).stdout.strip() == "apache-2.0"
    params = run_cli("show", "smollm2", "--parameters", env=fresh).stdout
    assert "temperature" in params and "top_p" in params


def test_a_catalog_model_not_yet_pulled_is_shown_from_the_catalog(fresh):
    shown = run_cli("show", "phi4-mini", env=fresh)
    assert shown.returncode == 0, shown.stderr
    assert "phi4:mini" in shown.stdout and "3.8B" in shown.stdout and "mit" in shown.stdout
    assert "aipc pull phi4:mini" in shown.stdout
    unknown = run_cli("show", "phi5", env=fresh)
    assert unknown.returncode == 2 and "did you mean" in unknown.stderr


def _fake_cache(home: Path, name: str, source: Path) -> Path:
    """A conversion folder as gguf_openvino writes it: the IR's files and the manifest naming its source."""
    folder = home / "cache" / "gguf-openvino" / name
    folder.mkdir(parents=True)
    (folder / "openvino_model.bin").write_bytes(b"\0" * 4096)
    (folder / "aipc-manifest.json").write_text(json.dumps({"source": str(source)}))
    (folder / ".complete").write_text("ok\n")
    return folder


def test_caches_are_attributed_and_prune_frees_only_what_nothing_uses(fresh, tmp_path, monkeypatch):
    home = Path(fresh["AIPC_HOME"])
    monkeypatch.setenv("AIPC_HOME", str(home))
    embedded_ir = _fake_cache(home, "SmolLM2-a-compressed", resolve(None).path)
    gone = tmp_path / "deleted.gguf"
    orphan_ir = _fake_cache(home, "deleted-b-npu", gone)
    outside = tmp_path / "kept.gguf"
    outside.write_bytes(b"GGUF")
    outside_ir = _fake_cache(home, "kept-c-compressed", outside)
    compiled = caches.compiled_dir(embedded_ir)
    (compiled / "1234.blob").write_bytes(b"\0" * 8192)
    orphan_compiled = caches.compiled_dir(orphan_ir)
    (orphan_compiled / "5678.blob").write_bytes(b"\0" * 1024)
    (home / "cache" / "openvino" / "9999.blob").write_bytes(b"\0" * 512)  # from before per-IR folders

    found = {c.path: c for c in caches.scan()}
    assert found[embedded_ir].owner == "smollm2:135m@embedded" and found[embedded_ir].kind == "ir"
    assert found[compiled].owner == "smollm2:135m@embedded" and found[compiled].kind == "compiled"
    assert found[orphan_ir].unused and found[orphan_ir].kind == "ir-npu" and found[orphan_compiled].unused
    assert not found[outside_ir].unused and found[outside_ir].owner == ""
    assert found[home / "cache" / "openvino"].kind == "shared"

    [row] = json.loads(run_cli("list", "--json", env=fresh).stdout)
    assert row["cache_bytes"] == found[embedded_ir].size_bytes + found[compiled].size_bytes
    listed = run_cli("list", env=fresh).stdout
    assert "aipc prune" in listed and "Caches of files outside the store" in listed

    dry = run_cli("prune", "--dry-run", env=fresh)
    assert dry.returncode == 0 and "would free" in dry.stdout and orphan_ir.is_dir()
    pruned = run_cli("prune", env=fresh)
    assert pruned.returncode == 0, pruned.stderr
    assert "freed" in pruned.stdout and str(gone) in pruned.stdout
    assert not orphan_ir.exists() and not orphan_compiled.exists()
    assert not (home / "cache" / "openvino" / "9999.blob").exists()
    assert embedded_ir.is_dir() and (compiled / "1234.blob").is_file() and outside_ir.is_dir()
    assert run_cli("prune", env=fresh).stdout.strip() == "Nothing to prune."

    removed = run_cli("rm", "smollm2", env=fresh)  # the embedded model stays; its caches go
    assert removed.returncode == 0, removed.stderr
    assert "removed 2 derived caches of smollm2:135m" in removed.stdout and "stays" in removed.stdout
    assert not embedded_ir.exists() and not compiled.exists() and outside_ir.is_dir()
    assert resolve(None).path.is_file()


def test_a_real_first_run_names_its_conversion_and_its_caches_are_listed_and_removed(tmp_path):
    """On a terminal, the first run shows its GGUF -> IR conversion as a step; list counts the cache."""
    from tests.test_cli import run_in_terminal

    env = {"AIPC_HOME": str(tmp_path / "home")}
    out, status = run_in_terminal(["run", "--max-tokens", "4", "--temperature", "0", PARIS_QUESTION], env=env)
    assert status == 0, out
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf to OpenVINO IR (first run only)" in out
    assert "✓ converting SmolLM2-135M-Instruct.Q4_1.gguf" in out and "loading the default model" in out
    [row] = json.loads(run_cli("list", "--json", env=env).stdout)
    assert row["cache_bytes"] > 50e6  # the IR (~100 MB) and its compiled blobs
    removed = run_cli("rm", "smollm2:135m@embedded", env=env)
    assert removed.returncode == 0 and "derived caches of smollm2:135m@embedded" in removed.stdout
    assert json.loads(run_cli("list", "--json", env=env).stdout)[0]["cache_bytes"] == 0
    again = run_cli("run", "--max-tokens", "4", PARIS_QUESTION, env=env)
    assert again.returncode == 0, again.stderr


def test_cp_hard_links_every_variant_and_the_copy_runs(fresh):
    copied = run_cli("cp", "smollm2", "mysmol", env=fresh)
    assert copied.returncode == 0, copied.stderr
    assert "copied smollm2:135m@embedded to mysmol@gguf-q4_1" in copied.stdout
    [variant] = [v for v in json.loads(run_cli("list", "--json", env=fresh).stdout) if v["name"] == "mysmol"]
    [gguf] = Path(variant["path"]).glob("*.gguf")
    original = resolve(None).path
    assert gguf.read_bytes()[:64] == original.read_bytes()[:64] and gguf.stat().st_size == original.stat().st_size
    if gguf.stat().st_dev == original.stat().st_dev:
        assert gguf.stat().st_ino == original.stat().st_ino  # a hard link, no extra space
    again = run_cli("cp", "mysmol", "mysmol2", env=fresh)
    assert again.returncode == 0, again.stderr
    [copy2] = (Path(fresh["AIPC_HOME"]) / "models" / "mysmol2" / "gguf-q4_1").glob("*.gguf")
    assert copy2.stat().st_ino == gguf.stat().st_ino  # within the store: always a hard link
    ran = run_cli("run", "mysmol2", "--backend", "llamacpp", "--max-tokens", "3", "--verbose", "hi", env=fresh)
    assert ran.returncode == 0, ran.stderr
    assert "mysmol2@gguf-q4_1 on llamacpp/cpu" in ran.stderr
    shown = run_cli("show", "mysmol2", env=fresh).stdout
    # a copy of a copy still samples as the catalog says the embedded model should
    assert re.search(r"temperature\s+0\.2\b", shown) and re.search(r"repeat_penalty\s+1\.1\b", shown), shown
    for bad, message in [
        (("mysmol", "mysmol2"), "already exists"),
        (("mysmol", "phi3"), "is a catalog name"),
        (("nosuch", "x"), "no model 'nosuch' to copy"),
        (("mysmol", "../x"), "invalid model name"),
    ]:
        result = run_cli("cp", *bad, env=fresh)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
    gone = run_cli("rm", "mysmol", env=fresh)
    assert gone.returncode == 0 and copy2.is_file()  # removing one copy leaves the other whole


MODELFILE = '''# a pirate on the embedded model
FROM smollm2
SYSTEM """You are a pirate.
Answer in one line."""
PARAMETER temperature 0
PARAMETER num_predict 5
PARAMETER min_p 0.05
PARAMETER stop "<|im_end|>"
PARAMETER stop "Arr"
TEMPLATE """{% for m in messages %}<|im_start|>{{ m['role'] }}
{{ m['content'] }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
PIRATE:{% endif %}"""
LICENSE """Apache-2.0, as the base"""
MESSAGE user Who are you?
MESSAGE assistant A pirate.
'''


def test_create_from_a_modelfile_applies_system_template_and_parameters(fresh, tmp_path, monkeypatch):
    import aipc

    mf = tmp_path / "Modelfile"
    mf.write_text(MODELFILE)
    made = run_cli("create", "pirate", "-f", str(mf), env=fresh)
    assert made.returncode == 0, made.stderr
    assert "created pirate from smollm2:135m" in made.stdout
    shown = run_cli("show", "pirate", env=fresh).stdout
    assert "made from smollm2:135m" in shown and "You are a pirate." in shown and "num_predict     5" in shown
    assert "min_p           0.05" in shown
    assert "architecture      llama" in shown  # the base's facts
    modelfile = run_cli("show", "pirate", "--modelfile", env=fresh).stdout
    assert "FROM smollm2:135m" in modelfile and "PARAMETER num_predict 5" in modelfile

    monkeypatch.setenv("AIPC_HOME", fresh["AIPC_HOME"])
    with aipc.load("pirate", backend="llamacpp", device="cpu") as model:
        assert model.defaults.temperature == 0 and model.defaults.max_tokens == 5 and model.defaults.min_p == 0.05
        assert model.defaults.stop == ("<|im_end|>", "Arr")
        prompt = model.format([{"role": "user", "content": "Hello"}])
        assert prompt.startswith("<|im_start|>system\nYou are a pirate.\nAnswer in one line.<|im_end|>")
        assert prompt.endswith("<|im_start|>assistant\nPIRATE:")  # the created template, not the model's
        own = model.format([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
        assert "pirate" not in own  # a request's own system message wins
        *_, done = model.stream("Tell me a long story about the sea.")
    assert done.usage.completion_tokens <= 5 and done.model == "pirate@embedded"
    ran = run_cli("run", "pirate", "--backend", "llamacpp", "--verbose", "Tell me a long story.", env=fresh)
    assert ran.returncode == 0, ran.stderr
    assert "pirate@embedded (q4_1 GGUF) on llamacpp/cpu" in ran.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM smollm2\nTEMPLATE {{ .System }} {{ .Prompt }}", "Go template syntax"),
        ("FROM smollm2\nTEMPLATE {% for m in messages %}", "TEMPLATE: chat template"),
        ("FROM smollm2\nPARAMETER temperature hot", "line 2: PARAMETER temperature takes a number, got 'hot'"),
        ("FROM smollm2\nPARAMETER top_p 3", "top_p must be a number in (0, 1]"),
        ("FROM smollm2\nPARAMETER min_p 2", "min_p must be a number from 0 to 1"),
        ("FROM smollm2\nPARAMETER mirostat 1", "unknown parameter 'mirostat'"),
        ("FROM smollm2\nFOO bar", "line 2: unknown instruction 'FOO'"),
        ("SYSTEM hi", "no FROM line"),
        ("FROM phi5", "unknown model 'phi5'"),
        ("FROM ./missing.gguf", "no such file or folder"),
        ('FROM smollm2\nSYSTEM """never closed', "never closes it"),
        ("FROM smollm2\nADAPTER ./lora.gguf", "ADAPTER (LoRA) is not supported"),
    ],
)
def test_bad_modelfiles_are_one_line_errors(fresh, tmp_path, text, message):
    mf = tmp_path / "Modelfile"
    mf.write_text(text)
    result = run_cli("create", "broken", "-f", str(mf), env=fresh)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Jinja2" in result.stderr if "Go template" in message else True
    assert not (Path(fresh["AIPC_HOME"]) / "models" / "broken").exists()


def test_create_refuses_catalog_names_and_loops_and_caps_the_context(fresh, tmp_path):
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM smollm2\n")
    taken = run_cli("create", "phi3", "-f", str(mf), env=fresh)
    assert taken.returncode == 2 and "is a catalog name" in taken.stderr
    mf.write_text("FROM smollm2\nPARAMETER num_ctx 48\n")
    assert run_cli("create", "tiny-ctx", "-f", str(mf), env=fresh).returncode == 0
    mf.write_text("FROM tiny-ctx\nPARAMETER temperature 0\n")
    assert run_cli("create", "child", "-f", str(mf), env=fresh).returncode == 0
    mf.write_text("FROM child\n")
    loop = run_cli("create", "tiny-ctx", "-f", str(mf), env=fresh)
    assert loop.returncode == 2 and "loop" in loop.stderr
    long = run_cli("run", "child", "--backend", "llamacpp", " ".join(["word"] * 80), env=fresh)
    assert long.returncode == 2 and "this model's context is 48 tokens (num_ctx)" in long.stderr
    short = run_cli("run", "child", "--backend", "llamacpp", "--verbose", "hi", env=fresh)
    assert short.returncode == 0, short.stderr
    prompt_tokens = int(short.stderr.split("prompt ")[1].split(" ")[0])
    generated = int(short.stderr.split(" tokens generated")[0].rsplit(" ", 1)[1])
    assert prompt_tokens + generated <= 48


def test_pull_from_a_copied_folder_imports_it(fresh, tmp_path, phi3_fixtures):
    """Offline: the folder downloaded elsewhere (here an OpenVINO export) becomes NAME@openvino-int4."""
    from aipc.convert.api import convert

    exported = convert(str(phi3_fixtures["tiny"]), "openvino", "int4", name="fx-tiny")
    folder = tmp_path / "Phi-3.5-mini-instruct-int4-ov"
    folder.mkdir()
    for f in exported.path.iterdir():
        if f.is_file() and not f.name.startswith("."):
            (folder / f.name).write_bytes(f.read_bytes())
    (folder / "modeling_evil.py").write_text("import os")  # never taken: no code from a model folder
    result = run_cli("pull", "phi3.5", "--from", str(folder), env=fresh)
    assert result.returncode == 0, result.stderr
    assert "phi3.5:mini@openvino-int4" in result.stdout
    [manifest] = json.loads(run_cli("show", "phi3.5", "--json", env=fresh).stdout)
    assert manifest["source"]["kind"] == "folder" and manifest["source"]["path"] == str(folder.resolve())
    assert manifest["source"]["repo"] == "OpenVINO/Phi-3.5-mini-instruct-int4-ov"
    assert not (Path(manifest["path"]) / "modeling_evil.py").exists()
    ran = run_cli("run", "phi3.5", "--max-tokens", "3", "hello", env=fresh)
    assert ran.returncode == 0, ran.stderr
    bad = run_cli("pull", "phi4-mini", "--from", str(tmp_path), env=fresh)
    assert bad.returncode == 2 and "not an OpenVINO model folder" in bad.stderr


def test_pull_on_a_terminal_reports_the_download_as_aipc_steps(fresh, phi3_fixtures):
    """huggingface_hub's own bars are replaced by aipc's step (a bar on a terminal), kept as one line after."""
    from aipc.convert.api import convert
    from tests.hub_server import FakeHub
    from tests.test_cli import run_in_terminal

    exported = convert(str(phi3_fixtures["tiny"]), "openvino", "int4", name="fx-tiny")
    with FakeHub({"OpenVINO/Phi-3.5-mini-instruct-int4-ov": exported.path}) as hub:
        out, status = run_in_terminal(["pull", "phi3.5"], env={**fresh, "HF_ENDPOINT": hub.url})
    assert status == 0, out
    assert "✓ downloading OpenVINO/Phi-3.5-mini-instruct-int4-ov" in out
    assert "Fetching" not in out and "it/s" not in out  # no tqdm bar of huggingface_hub's own


def test_converter_output_is_hidden_unless_verbose(fresh):
    quiet = run_cli("convert", "smollm2", "--to", "gguf", "--precision", "q4_0", env=fresh, timeout=600)
    assert quiet.returncode == 0, quiet.stderr
    assert "llama_model_quantize" not in quiet.stderr and "smollm2:135m@gguf-q4_0" in quiet.stdout
    run_cli("rm", "smollm2:135m@gguf-q4_0", env=fresh)
    loud = run_cli("convert", "smollm2", "--to", "gguf", "--precision", "q4_0", "--verbose", env=fresh, timeout=600)
    assert loud.returncode == 0, loud.stderr
    assert "llama_model_quantize" in loud.stderr  # llama.cpp's own log, passed through
