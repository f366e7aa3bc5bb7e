"""Ollama's /api/create through the official `ollama` client and raw HTTP: from a model this server has, with a
system prompt and parameters, and from a GGUF file uploaded as a blob (what `ollama create` sends for
`FROM ./model.gguf`). A real server on loopback, serving the real embedded model (its own, from
test_server_ollama's fixtures).
"""

from __future__ import annotations

import json

import tests.test_server_ollama as ollama_tests
from aipc.store import store

MODEL, PARIS, _parameters = ollama_tests.MODEL, ollama_tests.PARIS, ollama_tests._parameters
# the same fixtures, so this module starts a server of its own
server, client, http = ollama_tests.server, ollama_tests.client, ollama_tests.http


def test_create_from_a_model_with_a_system_prompt_and_parameters(client, http):
    for name in ("smol-terse", "smol-legacy", "x1"):
        if store.find(name):
            store.remove(name)
    system = "Answer in one word."
    made = client.create(
        model="smol-terse:latest",  # Ollama's default tag: the model is `smol-terse`, found by either name
        from_=MODEL,
        system=system,
        parameters={"temperature": 0, "num_predict": 6, "stop": ["\n\n"], "num_ctx": 2048, "num_gpu": 99},
        messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    )
    assert made.status == "success"
    assert "smol-terse" in [m.model for m in client.list().models]
    shown = client.show("smol-terse:latest")
    listed = _parameters(shown.parameters)
    assert listed["temperature"] == ["0.0"] and listed["num_predict"] == ["6"] and listed["num_ctx"] == ["2048"]
    assert '"\\n\\n"' in listed["stop"]  # a JSON string, one line per stop string
    assert f'SYSTEM """{system}"""' in shown.modelfile
    reply = client.chat(model="smol-terse", messages=PARIS)
    assert 1 <= reply.eval_count <= 6  # its num_predict
    # its system prompt and temperature: the same tokens as the base model given them in the request
    base = client.chat(
        model=MODEL,
        messages=[{"role": "system", "content": system}, *PARIS],
        options={"temperature": 0, "num_predict": 6},
    )
    assert reply.message.content == base.message.content
    assert {m.model: m.context_length for m in client.ps().models}["smol-terse"] == 2048  # its num_ctx
    unlimited = client.chat(model="smol-terse", messages=PARIS, options={"num_predict": -1})
    assert unlimited.eval_count > 6  # -1: no limit, the model's own num_predict included
    # created again while loaded: the earlier version is unloaded, not served on
    client.create(model="smol-terse", from_=MODEL, system="Answer in French.", parameters={"num_predict": -1})
    assert "smol-terse" not in [m.model for m in client.ps().models]
    assert "num_predict" not in _parameters(client.show("smol-terse").parameters)  # Ollama's -1: no limit
    streamed = [
        json.loads(line)
        for line in http.post("/api/create", json={"model": "smol-terse", "from": MODEL}).text.splitlines()
    ]
    assert streamed[-1] == {"status": "success"} and len(streamed) >= 2  # NDJSON progress; replaced in place
    # an older client's whole Modelfile
    r = http.post(
        "/api/create", json={"name": "smol-legacy", "modelfile": f"FROM {MODEL}\nPARAMETER top_k 7", "stream": False}
    )
    assert r.status_code == 200 and r.json() == {"status": "success"}
    assert _parameters(client.show("smol-legacy").parameters)["top_k"] == ["7"]
    bad = [
        ({"model": "x1", "from": "no-such-model"}, 404, "no-such-model"),
        ({"model": "x1"}, 400, "from is required"),
        ({"model": "x1", "from": MODEL, "template": "{{ .Prompt }}"}, 400, "Go template"),
        ({"model": "x1", "from": MODEL, "parameters": {"frobnicate": 1}}, 400, "unknown parameter 'frobnicate'"),
        ({"model": "x1", "from": MODEL, "parameters": {"temperature": "hot"}}, 400, "takes a number"),
        ({"model": "x1", "from": MODEL, "parameters": {"temperature": -1}}, 400, "temperature"),
        ({"model": "x1", "files": {"m.gguf": "sha256:" + "0" * 64}}, 400, "upload it first with POST /api/blobs/"),
        ({"model": "x1", "files": {"model.safetensors": "sha256:" + "0" * 64}}, 400, "one .gguf file"),
        ({"model": "x1", "files": {"m.gguf": "sha256:nothex"}}, 400, "invalid blob digest"),
        ({"model": "x1", "from": MODEL, "files": {"m.gguf": "sha256:" + "0" * 64}}, 400, "cannot both be set"),
        ({"model": "x1", "from": MODEL, "adapters": {"a.gguf": "sha256:" + "0" * 64}}, 400, "adapters"),
        ({"model": "x1", "from": MODEL, "quantize": "q4_K_M"}, 400, "aipc convert"),
        ({"model": "smollm2", "from": MODEL}, 400, "catalog name"),
        ({"model": "../x", "from": MODEL}, 400, "invalid model name"),
        ({"model": "x1", "from": "/etc/passwd"}, 400, "--allow-paths"),
        ({"model": "x1", "from": "smol-legacy", "modelfile": "FROM x1"}, 400, "FROM itself"),
        # a Modelfile's FROM path is refused before the file system is looked at: no "no such file" for /nope
        ({"model": "x1", "modelfile": "FROM /etc/passwd"}, 400, "does not open model files"),
        ({"model": "x1", "modelfile": "FROM /nope/nothing"}, 400, "does not open model files"),
        ({"model": "x1", "modelfile": "FROM ~/.bashrc"}, 400, "does not open model files"),
        ({"model": "x1", "from": MODEL, "parameters": {"temperature": -1}}, 400, "parameters.temperature"),
    ]
    for body, status, fragment in bad:
        r = http.post("/api/create", json={**body, "stream": False})
        assert r.status_code == status and fragment in r.json()["error"], (body, r.status_code, r.text)
        assert "no such file" not in r.json()["error"] and "/root" not in r.json()["error"]
    assert not store.find("x1")
    for name in ("smol-terse", "smol-legacy"):
        client.generate(model=name, keep_alive=0)
        assert client.delete(name).status == "success"


def test_create_from_an_uploaded_gguf_file(client, http):
    """What `ollama create` sends for a Modelfile whose FROM is a GGUF file: the file as a blob, then /api/create
    naming its digest in `files`, with the Modelfile's system prompt and parameters."""
    import hashlib
    import shutil

    from aipc.store import blobs
    from aipc.store.resolve import resolve

    if store.find("smol-upload"):
        store.remove("smol-upload")
    gguf = resolve(MODEL).path  # the embedded model's file
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    try:
        assert http.head(f"/api/blobs/{digest}").status_code == 404
        assert client.create_blob(gguf) == digest  # streamed, past the 1 MiB limit on other bodies
        assert http.head(f"/api/blobs/{digest}").status_code == 200
        assert http.post(f"/api/blobs/{digest}", content=b"").status_code == 200  # had already: not read again
        system = "Answer in one word."
        made = client.create(
            model="smol-upload", files={"smollm2.gguf": digest}, system=system, parameters={"temperature": 0}
        )
        assert made.status == "success" and client.show("smol-upload").details.format == "gguf"
        assert http.head(f"/api/blobs/{digest}").status_code == 404  # the model holds the file now
        assert f'SYSTEM """{system}"""' in client.show("smol-upload").modelfile
        reply = client.chat(model="smol-upload", messages=PARIS, options={"num_predict": 8})
        base = client.chat(
            model=MODEL,
            messages=[{"role": "system", "content": system}, *PARIS],
            options={"temperature": 0, "num_predict": 8},
        )
        assert reply.message.content == base.message.content  # the same file, its system prompt and temperature

        wrong = "sha256:" + "1" * 64
        r = http.post(f"/api/blobs/{wrong}", content=b"not those bytes")
        assert r.status_code == 400 and "do not have the digest" in r.json()["error"]
        assert not blobs.has(wrong) and not list(blobs.folder().glob(".partial-*"))  # nothing kept
        assert http.post("/api/blobs/../../etc/passwd", content=b"x").status_code in (400, 404)
        assert http.post("/api/blobs/sha256:nothex", content=b"x").status_code == 400
        junk = b"GGUF but not really a model file"
        junk_digest = "sha256:" + hashlib.sha256(junk).hexdigest()
        assert http.post(f"/api/blobs/{junk_digest}", content=junk).status_code == 201
        r = http.post("/api/create", json={"model": "x2", "files": {"junk.gguf": junk_digest}, "stream": False})
        assert r.status_code == 400 and "GGUF" in r.json()["error"] and not store.find("x2")
    finally:
        client.generate(model="smol-upload", keep_alive=0)
        if store.find("smol-upload"):
            client.delete("smol-upload")
        shutil.rmtree(blobs.folder(), ignore_errors=True)
