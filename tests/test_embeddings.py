"""Text embeddings: the engine's on each backend that has them (the real embedded SmolLM2: its Q4_1 GGUF on
OpenVINO and llama.cpp, its dequantized weights on PyTorch), and the routes that serve them, through the official
`openai` and `ollama` clients against a real server.
"""

from __future__ import annotations

import base64
import struct

import numpy as np
import ollama
import pytest
from openai import BadRequestError, OpenAI

import aipc
from aipc.errors import ContextLengthError, UsageError
from aipc.server.settings import ServerSettings
from tests.test_server_support import LiveServer

TEXTS = ["The cat sat on the mat.", "A kitten rested on the rug.", "Quarterly revenue rose by ten percent."]
MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def vectors(smollm2_phi3) -> dict[str, np.ndarray]:
    """Each backend's embeddings of TEXTS, one model open at a time."""
    out = {}
    for backend, spec in (("openvino", MODEL), ("llamacpp", MODEL), ("torch", str(smollm2_phi3))):
        with aipc.load(spec, backend=backend, device="cpu") as model:
            result = model.embed(TEXTS)
            assert result.prompt_tokens == sum(len(model.tokenize(t)) for t in TEXTS) and result.truncated == 0
            one = model.embed(TEXTS[2:])  # alone or in a list, the same vector
            assert np.allclose(one.vectors[0], result.vectors[2], atol=1e-5)
            out[backend] = np.asarray(result.vectors)
    return out


def test_embeddings_are_unit_vectors_that_place_like_texts_together(vectors):
    for backend, v in vectors.items():
        assert v.shape == (3, 576), backend  # SmolLM2-135M's hidden size
        assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
        similar, unrelated = v[0] @ v[1], v[0] @ v[2]
        assert similar > unrelated + 0.1, (backend, similar, unrelated)


def test_every_backend_computes_the_same_embedding(vectors):
    """The same model's mean normed hidden state: OpenVINO and llama.cpp read the same Q4_1 file; PyTorch runs
    its exact dequantization (measured: 0.999 between the two runtimes)."""
    for backend in ("llamacpp", "torch"):
        agreement = np.sum(vectors["openvino"] * vectors[backend], axis=1)
        assert agreement.min() > 0.99, (backend, agreement)


@pytest.mark.parametrize("backend", ["openvino", "llamacpp"])
def test_long_texts_are_cut_or_refused_and_empty_ones_refused(backend):
    with aipc.load(MODEL, backend=backend, device="cpu", context_length=64) as model:
        long = "word " * 200
        cut = model.embed([long])
        assert cut.truncated == 1 and cut.prompt_tokens == 64
        assert np.allclose(cut.vectors[0], model.embed([model.tokenize(long)[:64]]).vectors[0], atol=1e-5)
        with pytest.raises(ContextLengthError, match="over the 64"):
            model.embed([long], truncate=False)
        with pytest.raises(UsageError, match=r"input\[1\] is empty"):
            model.embed(["hi", ""])
        with pytest.raises(UsageError, match="not in this model's vocabulary"):
            model.embed([[1, 10**9]])


def test_a_backend_without_embeddings_names_those_with_them(phi3_fixtures):
    from aipc.convert.api import convert

    onnx = convert(str(phi3_fixtures["tiny"]), "onnx", "fp32", name="fx-tiny").ref
    with (
        aipc.load(onnx, backend="onnxruntime", device="cpu") as model,
        pytest.raises(UsageError, match="cannot compute embeddings.*openvino, llamacpp, torch"),
    ):
        model.embed(["hi"])


# --- the routes --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(model):
    with LiveServer(ServerSettings(), model) as live:
        yield live


def test_openai_embeddings_through_the_openai_client(server, model):
    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    made = client.embeddings.create(model=MODEL, input=TEXTS)
    assert [d.index for d in made.data] == [0, 1, 2] and made.model == MODEL
    v = np.asarray([d.embedding for d in made.data])
    assert np.allclose(v, model.embed(TEXTS).vectors, atol=1e-4)  # the served model's own
    assert made.usage.prompt_tokens == made.usage.total_tokens == sum(len(model.tokenize(t)) for t in TEXTS)
    packed = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="base64", dimensions=64)
    raw = packed.data[0].embedding
    short = np.asarray(struct.unpack("<64f", base64.b64decode(raw)) if isinstance(raw, str) else raw)
    assert short.shape == (64,) and abs(np.linalg.norm(short) - 1) < 1e-4
    assert np.allclose(short, v[0][:64] / np.linalg.norm(v[0][:64]), atol=1e-4)
    ids = client.embeddings.create(model=MODEL, input=[model.tokenize(TEXTS[1])])  # token ids, as tiktoken sends
    assert np.allclose(ids.data[0].embedding, v[1], atol=1e-4)
    for kwargs, param in (
        ({"input": "word " * 9000}, "input"),  # over the context: refused, as OpenAI refuses
        ({"input": []}, "input"),
        ({"input": "hi", "dimensions": 10_000}, "dimensions"),
    ):
        with pytest.raises(BadRequestError) as info:
            client.embeddings.create(model=MODEL, **kwargs)
        assert info.value.body["param"] == param, info.value.body


def test_ollama_embed_and_the_older_embeddings_route(server, model):
    from aipc.store import store

    if store.find("smol-embed-64"):
        store.remove("smol-embed-64")
    client = ollama.Client(host=server.url, timeout=120)
    made = client.embed(model="smollm2", input=TEXTS)
    assert made.model == "smollm2" and len(made.embeddings) == 3 and made.prompt_eval_count > 0
    assert np.allclose(made.embeddings, model.embed(TEXTS).vectors, atol=1e-4)
    one = client.embed(model=MODEL, input=TEXTS[0], dimensions=32)
    assert len(one.embeddings[0]) == 32
    older = client.embeddings(model=MODEL, prompt=TEXTS[0])
    assert np.allclose(older.embedding, made.embeddings[0], atol=1e-4)
    assert client.embed(model=MODEL, input="").embeddings == []  # nothing to embed: the model is loaded
    # Ollama's default cuts a text to the context (here a created model's num_ctx); truncate: false refuses it
    assert client.create(model="smol-embed-64", from_=MODEL, parameters={"num_ctx": 64}).status == "success"
    cut = client.embed(model="smol-embed-64", input="word " * 200)
    assert len(cut.embeddings) == 1 and cut.prompt_eval_count == 64
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(model="smol-embed-64", input="word " * 200, truncate=False)
    assert info.value.status_code == 400 and "truncate" in info.value.error
    client.generate(model="smol-embed-64", keep_alive=0)
    client.delete("smol-embed-64")
    with pytest.raises(ollama.ResponseError) as info:
        client.embed(model="no-such-model", input="hi")
    assert info.value.status_code == 404
