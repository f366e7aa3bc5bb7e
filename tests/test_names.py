"""What users type: Ollama's names and tags, the rule that tells a model from a prompt, and the errors."""

from __future__ import annotations

import time

import pytest

from aipc.errors import ModelNotFoundError
from aipc.store import catalog
from aipc.store.resolve import canonical_ref, looks_like_model, resolve, resolve_all
from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("phi3", "phi3:mini"),
        ("phi3:mini", "phi3:mini"),
        ("phi3:3.8b", "phi3:mini"),
        ("phi3:latest", "phi3:mini"),
        ("phi3:mini-4k", "phi3:mini"),
        ("phi3:mini-128k", "phi3:mini-128k"),
        ("phi3.5", "phi3.5:mini"),
        ("phi3.5:mini", "phi3.5:mini"),
        ("phi3.5:3.8b", "phi3.5:mini"),
        ("phi4-mini", "phi4:mini"),
        ("phi4-mini:3.8b", "phi4:mini"),
        ("phi4:mini", "phi4:mini"),
        ("smollm2", "smollm2:135m"),
        ("smollm2:135m", "smollm2:135m"),
        ("smollm2:latest", "smollm2:135m"),
        ("Phi3", "phi3:mini"),  # names are case-insensitive, as Ollama's
    ],
)
def test_ollama_names_resolve_to_catalog_models(typed, canonical):
    assert catalog.canonical(typed) == canonical
    assert looks_like_model(typed)
    assert canonical_ref(f"{typed}@openvino-int4") == f"{canonical}@openvino-int4"


@pytest.mark.parametrize("absent", ["phi4", "phi3:medium", "phi3:14b", "smollm2:1.7b"])
def test_ollama_models_not_in_the_catalog_are_not_aliases(absent):
    """Ollama's phi4 is the 14B model and phi3:medium 14B: silently running a mini instead would mislead."""
    assert catalog.canonical(absent) is None
    with pytest.raises(ModelNotFoundError, match=f"unknown model '{absent}'"):
        resolve(absent)


def test_the_embedded_model_answers_to_its_aliases():
    for name in ("smollm2", "smollm2:latest", "smollm2:135m@embedded"):
        sources = resolve_all(name)
        assert sources[-1].variant == "embedded" and sources[-1].ref == "smollm2:135m@embedded"
        assert sources[-1].path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.parametrize(
    ("word", "is_model"),
    [
        ("phi3", True),
        ("phi5", True),  # shaped like a model family with a version: an unknown model, never a prompt
        ("smolm2", True),  # a near miss of a known name
        ("llama3:8b", True),
        ("mymodel@gguf-q4_0", True),
        ("./model.gguf", True),
        ("~/models/x", True),
        ("model.gguf", True),
        ("Summarise:", False),
        ("hello", False),
        ("Translate", False),
        ("What is 2+2?", False),
        ("2024", False),
        ("H2O", False),
        ("", False),
    ],
)
def test_model_or_prompt(word, is_model):
    assert looks_like_model(word) is is_model


def test_a_bare_word_naming_a_file_is_prose_unless_the_file_is_a_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").write_text("not a model")
    assert not looks_like_model("notes")
    (tmp_path / "mini").mkdir()
    (tmp_path / "mini" / "openvino_model.xml").write_text("<net/>")
    assert looks_like_model("mini")


@pytest.mark.parametrize(
    ("word", "guess"),
    [("phi5", "did you mean phi3.5?"), ("phi4", "did you mean phi4-mini?"), ("smolm2", "did you mean smollm2?")],
)
def test_an_unknown_first_word_is_an_error_with_a_suggestion_not_a_prompt(word, guess):
    started = time.perf_counter()
    result = run_cli("run", word, "hello")
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert f"unknown model '{word}': {guess}" in line
    assert "valid names are smollm2:135m (smollm2), phi3:mini (phi3)" in line and "phi4:mini (phi4-mini)" in line
    assert f"aipc run -- {word}" in line  # how to send it as the prompt after all
    assert time.perf_counter() - started < 20  # before any model loads


def test_a_catalog_model_that_is_not_stored_is_a_model_even_offline(tmp_path):
    """`aipc run phi3` with the hub out of reach: the offline message, not an answer to the prompt 'phi3'."""
    result = run_cli("run", "phi3", "hello", env={"AIPC_HOME": str(tmp_path / "empty")})
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert "'phi3:mini' is not in the store" in line
    assert "hf download OpenVINO/Phi-3-mini-4k-instruct-int4-ov --local-dir Phi-3-mini-4k-instruct-int4-ov" in line
    assert "aipc pull phi3:mini --from Phi-3-mini-4k-instruct-int4-ov" in line


def test_with_prompt_flag_or_dashes_only_the_model_comes_first():
    result = run_cli("run", "smollm2", "extra", "-p", "hello")
    assert result.returncode == 2
    assert "only the model comes before; got more words: 'extra'" in result.stderr
    result = run_cli("run", "smollm2", "extra", "--", "hello")
    assert result.returncode == 2 and "got more words: 'extra'" in result.stderr
