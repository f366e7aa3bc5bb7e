"""Speculative decoding on the real runtimes, with the embedded model.

- Same output: at 32-bit precision, greedy decoding with speculation (lookup, auto, a draft model) gives the
  very tokens of plain decoding, on OpenVINO GenAI (f32 hints), llama.cpp (f16 GGUF, f32 math) and ONNX Runtime
  GenAI (fp32).
- The runtime's rule: seeded sampling through aipc gives the tokens the runtime's own speculative API gives.
- Refusals: a draft model with another tokenizer (the tiny Phi-3 fixture), prompt lookup where a runtime or
  device has none.
Speed is measured by benchmarks/speculate.py, not here.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import aipc
from aipc.backends import speculate
from aipc.convert.api import convert
from aipc.errors import UsageError
from tests.conftest import run_cli

PARAGRAPH = (
    "The old lighthouse stood on the edge of the cliff for more than a century. Sailors trusted its light on "
    "stormy nights, and children from the village climbed its spiral stairs every summer. When the keeper "
    "retired, the town decided to repair the lamp, paint the walls white again, and open a small museum about "
    "the ships that had passed the rocks below."
)
COPY = f"Repeat this paragraph exactly:\n{PARAGRAPH}"
STORY = "Write a short story about a robot who learns to paint."
GREEDY = {"temperature": 0, "max_tokens": 48}
# repetition_penalty 1.0: the runtimes' own pipelines below are called without one (aipc's default is the model's).
SAMPLING = {
    "temperature": 0.9,
    "top_p": 0.95,
    "top_k": 40,
    "seed": 7,
    "max_tokens": 40,
    "ignore_eos": True,
    "repetition_penalty": 1.0,
}


@pytest.fixture(scope="module")
def exact():
    """Each backend's 32-bit form of the embedded model, and the load options that keep its math at 32 bits."""
    return {
        "openvino": ("smollm2:135m", {"precision_hint": "f32"}),
        "llamacpp": (convert("smollm2:135m", "gguf", "f16", name="smollm2-embedded").ref, {}),
        "onnxruntime": (convert("smollm2:135m", "onnx", "fp32", name="smollm2-embedded").ref, {}),
    }


def _run(ref: str, backend: str, speculate_as: str, load: dict, prompt: str, **options):
    with aipc.load(ref, backend=backend, device="cpu", speculate=speculate_as, **load) as model:
        *_, done = model.stream(prompt, **options)
        again = None
        if speculate_as == "auto":  # the second request is planned from the first one's measurement
            *_, again = model.stream(prompt, **options)
    return done, again


def _assert_same_or_tied(ref: str, backend: str, load: dict, prompt: str, plain, other) -> None:
    """The same tokens, or, where they part, a tie within rounding: the token speculation chose is within 0.01
    nats of plain decoding's under the model (teacher-forced). llama.cpp runs the f16 GGUF with activations
    rounded to f16, and on an AVX2-only CPU its batched kernel (which checks drafts) rounds otherwise than the
    one-token path: measured there, the story parts at its 26th token on two tokens 0.004 nats apart. A wrong
    acceptance rule would part on a token that is no such tie."""
    if tuple(other) == tuple(plain):
        return
    at = next(i for i, (a, b) in enumerate(zip(plain, other, strict=False)) if a != b)
    with aipc.load(ref, backend=backend, device="cpu", speculate="off", **load) as model:
        ids = model.encode([{"role": "user", "content": prompt}]) + list(plain[: at + 1])
        scored = model.prompt_logprobs(ids, top=5)[-1]
    top = dict(scored.top)
    assert other[at] in top and abs(top[other[at]] - scored.logprob) < 0.01, (at, plain[at], other[at], top)


@pytest.mark.parametrize("backend", ["openvino", "llamacpp", "onnxruntime"])
def test_greedy_output_is_token_identical_with_and_without_speculation(exact, backend):
    ref, load = exact[backend]
    for prompt in (COPY, STORY):
        plain, _ = _run(ref, backend, "off", load, prompt, **GREEDY)
        assert (plain.drafted, plain.accepted) == (0, 0)
        looked, _ = _run(ref, backend, "lookup", load, prompt, **GREEDY)
        auto, auto_again = _run(ref, backend, "auto", load, prompt, **GREEDY)
        for done in (looked, auto, auto_again):
            _assert_same_or_tied(ref, backend, load, prompt, plain.token_ids, done.token_ids)
            assert 0 <= done.accepted <= done.drafted
        if prompt is COPY:
            # the answer copies the prompt: lookup drafts, and most drafts are the model's own next tokens
            assert looked.drafted > 0 and looked.accepted > 0.5 * looked.drafted, looked
            assert auto.drafted > 0 and auto.accepted > 0, auto  # a long new prompt starts speculating


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_openais_penalties_keep_greedy_output_unchanged_by_speculation(exact, backend):
    """presence and frequency penalties count the answer's tokens, drafted ones only once they are accepted:
    OpenVINO GenAI's prompt-lookup pipeline applies them itself; ONNX Runtime GenAI has none, so aipc shapes its
    logits between steps and decodes one token a step (nothing drafted)."""
    ref, load = exact[backend]
    settings = [
        {**GREEDY, "repetition_penalty": 1.0, **p} for p in ({"presence_penalty": 1.0}, {"frequency_penalty": 0.5})
    ]
    answers = {}
    for mode in ("off", "lookup", "auto"):
        with aipc.load(ref, backend=backend, device="cpu", speculate=mode, **load) as model:
            for i, options in enumerate(settings):
                *_, answers[mode, i] = model.stream(COPY, **options)
    for i in range(len(settings)):
        plain = answers["off", i].token_ids
        for mode in ("lookup", "auto"):
            done = answers[mode, i]
            assert tuple(done.token_ids) == tuple(plain), (mode, settings[i])
            if backend == "onnxruntime":
                assert done.drafted == 0, (mode, settings[i])
            elif mode == "lookup":
                assert done.accepted > 0.5 * done.drafted > 0, (mode, settings[i])


def test_openvino_auto_switches_pipelines_mid_answer_without_changing_it(exact, caplog):
    """OpenVINO fixes the draft width for a whole generation, so `auto` plans each request from earlier answers
    and corrects the plan while the answer is generated, by continuing in the other pipeline. The governor is
    given what it would otherwise learn: first that long prompts' answers copied nothing and that a plain step
    is slow, so a copy starts plainly and must switch to prompt lookup; then that long prompts' answers copied
    and that drafting is dear, so a new story after a long text starts drafting and must switch to plain
    decoding. Either way the tokens are plain decoding's (32-bit math), and the streamed text spells them.
    (The prompts given are of other templates than the copy's and the story's: each shares only the chat
    preamble with them, so both are planned from what the governor is given.)"""
    ref, load = exact["openvino"]
    story = f"{PARAGRAPH}\n\nNow forget that text and write a new story about a robot who learns to paint."
    opener = "Write a poem about these words: " + ", ".join(["river", "lantern", "harvest", "copper"] * 12)
    options = {"temperature": 0, "max_tokens": 96}
    with aipc.load(ref, backend="openvino", device="cpu", speculate="off", **load) as model:
        plain = {prompt: list(model.stream(prompt, **options))[-1] for prompt in (COPY, story)}
    with aipc.load(ref, backend="openvino", device="cpu", speculate="auto", **load) as model:
        governor = model._backend._speculator.governor
        encoded = [model.encode([{"role": "user", "content": text}]) for text in (COPY, story)]
        preamble = encoded[0][: speculate.common_prefix(*encoded)]  # what every chat prompt starts with

        def given(start: int) -> list[int]:  # a long prompt after the same chat preamble
            return [*preamble, *range(start, start + 200)]

        list(model.stream(opener, **options))  # a long prompt, planned from the prior: opens the prompt-lookup pipeline
        for start in (2000, 3000, 4000, 6000):  # long prompts whose answers were not in them
            governor.record("long", given(start), list(range(start + 500, start + 600)))
        for width, seconds in ((1, 0.5), (5, 0.55), (9, 0.6), (13, 0.65)):
            governor.costs.observe(width, seconds)
        with caplog.at_level(logging.DEBUG, logger="aipc"):
            *deltas, copied = model.stream(COPY, **options)
        assert "continuing with 0 drafts" not in caplog.text and "continuing with" in caplog.text, caplog.text
        assert copied.drafted > 0 and copied.accepted > 0.5 * copied.drafted, copied
        _assert_same_or_tied(ref, "openvino", load, COPY, plain[COPY].token_ids, copied.token_ids)
        _assert_spells(model, deltas, copied)

        for start in (2000, 3000, 4000, 6000):  # long prompts whose answers copied them
            governor.record("long", given(start), list(range(start + 20, start + 120)))
        governor.costs = speculate.StepCosts()  # checks measured dear
        for width, seconds in ((1, 0.5), (5, 2.0), (9, 3.0), (13, 4.0)):
            governor.costs.observe(width, seconds)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="aipc"):
            *deltas, wrote = model.stream(story, **options)
        assert "continuing with 0 drafts" in caplog.text, caplog.text
        _assert_same_or_tied(ref, "openvino", load, story, plain[story].token_ids, wrote.token_ids)
        _assert_spells(model, deltas, wrote)


def _assert_spells(model, deltas, done) -> None:
    """The streamed text is the answer's tokens detokenized (less the end-of-turn marker, which is cut)."""
    text, full = "".join(d.text for d in deltas), model.detokenize(done.token_ids)
    assert full.startswith(text) and len(full) - len(text) <= len("<|im_end|>"), (text, full)


@pytest.mark.parametrize(("total_kib", "speculates"), [(1 << 20, False), (64 << 20, True)])
def test_openvino_auto_speculates_only_where_a_second_pipeline_fits_in_memory(
    tmp_path, monkeypatch, total_kib, speculates
):
    """OpenVINO's prompt lookup runs in a second pipeline (its own compiled weights and KV cache): `auto` opens it
    only when that takes at most a tenth of the machine's memory. The embedded model's second pipeline takes
    about 0.2 GiB: too much for a machine of 1 GiB (the fixture's /proc/meminfo), little for one of 64 GiB."""
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text(f"MemTotal: {total_kib} kB\nMemAvailable: {total_kib // 2} kB\n")
    monkeypatch.setenv("AIPC_SYSROOT", str(tmp_path))
    with aipc.load("smollm2:135m", backend="openvino", device="cpu", context_length=4096) as model:
        *_, done = model.stream(COPY, **GREEDY)
    assert (done.drafted > 0) is speculates, done


def test_llamacpp_seeded_sampling_draws_the_same_tokens_with_and_without_speculation(exact):
    """On llama.cpp aipc's sampler checks the drafts (as the first stage of `Llama.generate`'s chain), one draw
    per position in order: the same seed gives the same tokens with prompt lookup as without it."""
    ref, _ = exact["llamacpp"]
    with aipc.load(ref, backend="llamacpp", device="cpu", speculate="lookup") as model:
        ids = model.encode([{"role": "user", "content": COPY}])
        *_, looked = model.stream(ids, raw=True, **SAMPLING)
    with aipc.load(ref, backend="llamacpp", device="cpu", speculate="off") as model:
        *_, plain = model.stream(ids, raw=True, **SAMPLING)
    assert looked.drafted > 0
    assert list(looked.token_ids) == list(plain.token_ids)


def test_openvino_seeded_sampling_is_openvino_genais_own_prompt_lookup():
    import openvino as ov
    import openvino_genai as ov_genai

    from aipc.backends.base import DeviceInfo
    from aipc.backends.openvino import pipeline_properties
    from aipc.engine.config import LoadConfig

    with aipc.load("smollm2:135m", backend="openvino", device="cpu", speculate="lookup") as model:
        ids = model.encode([{"role": "user", "content": COPY}])
        *_, done = model.stream(ids, raw=True, **SAMPLING)
        path = model.info.path
    assert done.drafted > 0
    props = pipeline_properties(LoadConfig(), DeviceInfo("cpu", "CPU", "CPU"))
    pipe = ov_genai.LLMPipeline(path, "CPU", prompt_lookup=True, **props)
    gc = ov_genai.GenerationConfig()
    gc.max_new_tokens, gc.ignore_eos, gc.stop_token_ids = SAMPLING["max_tokens"], True, set()
    gc.do_sample, gc.temperature, gc.top_p, gc.top_k, gc.rng_seed = True, 0.9, 0.95, 40, SAMPLING["seed"]
    gc.num_assistant_tokens, gc.max_ngram_size = speculate.DEFAULT_WIDTH, speculate.MAX_NGRAM
    array = np.asarray([ids], dtype=np.int64)
    result = pipe.generate(ov_genai.TokenizedInputs(ov.Tensor(array), ov.Tensor(np.ones_like(array))), gc)
    assert list(done.token_ids) == [int(t) for t in result.tokens[0]]


def test_onnxruntime_seeded_sampling_is_onnxruntime_genais_own_ngram_speculation(exact):
    import onnxruntime_genai as og

    from aipc.backends.onnxruntime_speculate import lookup_options

    ref, _ = exact["onnxruntime"]
    with aipc.load(ref, backend="onnxruntime", device="cpu", speculate="lookup") as model:
        ids = model.encode([{"role": "user", "content": COPY}])
        *_, done = model.stream(ids, raw=True, **SAMPLING)
        path, context = model.info.path, model.info.context_length
    assert done.drafted > 0
    raw = og.Model(path)
    params = og.GeneratorParams(raw)
    params.set_search_options(
        max_length=context,
        min_length=context,
        do_sample=True,
        repetition_penalty=1.0,
        temperature=0.9,
        top_p=0.95,
        top_k=40,
        random_seed=SAMPLING["seed"],
    )
    params.set_speculative_options(**lookup_options(speculate.DEFAULT_WIDTH))
    generator = og.Generator(raw, params)
    generator.append_tokens(np.asarray(ids, dtype=np.int32))
    theirs = []
    while len(theirs) < SAMPLING["max_tokens"]:
        generator.generate_next_token()
        theirs.append(int(generator.get_next_tokens()[0]))
    assert list(done.token_ids) == theirs


@pytest.mark.parametrize(
    ("backend", "draft"),
    [
        ("llamacpp", "smollm2:135m"),  # the embedded Q4_1 GGUF drafts for its f16 form
        ("openvino", "smollm2:135m"),  # the model drafts for itself
        ("onnxruntime", "smollm2-embedded@onnx-int4"),  # int4 drafts for fp32
    ],
)
def test_a_draft_model_with_the_same_tokenizer_keeps_greedy_output_unchanged(exact, backend, draft):
    ref, load = exact[backend]
    if backend == "onnxruntime":
        convert("smollm2:135m", "onnx", "int4", name="smollm2-embedded")
    plain, _ = _run(ref, backend, "off", load, COPY, **GREEDY)
    drafted, _ = _run(ref, backend, f"draft:{draft}", load, COPY, **GREEDY)
    assert drafted.token_ids == plain.token_ids
    assert drafted.drafted > 0 and 0 < drafted.accepted <= drafted.drafted, drafted


@pytest.mark.parametrize(
    ("backend", "to", "precision"),
    [("llamacpp", "gguf", "f16"), ("openvino", "openvino", "fp16"), ("onnxruntime", "onnx", "fp32")],
)
def test_a_draft_model_with_another_tokenizer_is_refused(exact, phi3_fixtures, backend, to, precision):
    other = convert(str(phi3_fixtures["tiny"]), to, precision, name="fx-tiny").ref
    ref, load = exact[backend]
    with pytest.raises(UsageError, match="does not share the model's tokenizer") as info:
        aipc.load(ref, backend=backend, device="cpu", speculate=f"draft:{other}", **load)
    assert "\n" not in str(info.value)


def test_prompt_lookup_on_the_npu_pipeline_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setenv("AIPC_EMULATE_NPU", "1")
    with pytest.raises(UsageError, match="static NPU pipeline has no prompt-lookup mode"):
        aipc.load("smollm2:135m", backend="openvino", device="npu", speculate="lookup")


def test_torch_the_reference_refuses_speculation_by_name(phi3_fixtures):
    with pytest.raises(UsageError, match="not supported by the torch backend: it is the reference"):
        aipc.load(str(phi3_fixtures["tiny"]), backend="torch", speculate="lookup")


def test_verbose_reports_drafted_and_accepted_tokens():
    result = run_cli(
        "run", "--speculate", "lookup", "--verbose", "--temperature", "0", "--max-tokens", "48", COPY, timeout=300
    )
    assert result.returncode == 0, result.stderr
    stats = result.stderr.strip().splitlines()[-1]
    drafted = int(stats.split("drafted ")[1].split(",")[0])
    accepted = int(stats.split("accepted ")[1].split(" ")[0])
    assert 0 < accepted <= drafted, stats


def test_bench_compares_speculate_settings_side_by_side():
    from aipc.bench import report, runner
    from aipc.cli.bench import configurations

    configs = configurations(["smollm2:135m"], ["llamacpp"], ["cpu"], None, ["off", "lookup"])
    assert [c.load for c in configs] == [{"speculate": "off"}, {"speculate": "lookup"}]
    result = runner.run(configs, [64], gen_tokens=24, repeats=1, warmup=0)
    rows = {r["speculate"]: r for r in result["results"]}
    assert rows["off"]["drafted"] == 0
    assert rows["lookup"]["drafted"] > 0  # the benchmark's prompt repeats one paragraph: lookup finds it
    table = report.table(result)
    assert "speculate" in table.splitlines()[0] and f"{rows['lookup']['accepted']}/" in table


def test_a_draft_model_runs_on_the_npu_pipeline(monkeypatch):
    """OpenVINO GenAI speculates with a draft model on the NPU's static pipeline (emulated here)."""
    monkeypatch.setenv("AIPC_EMULATE_NPU", "1")
    with aipc.load("smollm2:135m", backend="openvino", device="npu", speculate="draft:smollm2:135m") as model:
        assert model.info.device.startswith("npu")
        *_, done = model.stream(COPY, temperature=0, max_tokens=24)
    assert done.drafted > 0 and done.accepted > 0  # the model drafting for itself: its drafts are accepted


def test_the_server_speculates_as_told_and_counts_drafts_in_metrics():
    """`aipc serve --speculate lookup` drafts for the models its pool loads; /metrics counts drafted and accepted
    tokens per model, as a Prometheus client parses them."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from tests.test_server_support import ServerProcess

    def counted(url: str) -> dict[str, tuple[str, float]]:
        text = httpx.get(url + "/metrics", timeout=30).text
        return {
            s.name: (s.labels["model"], s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name.startswith("aipc_speculative_")
        }

    with ServerProcess("--backend", "llamacpp", "--speculate", "lookup") as srv:
        body = {"model": "smollm2:135m", "messages": [{"role": "user", "content": COPY}], **GREEDY}
        reply = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=300)
        assert reply.status_code == 200, reply.text
        found = counted(srv.url)
    (model, drafted), (_, accepted) = (
        found["aipc_speculative_drafted_tokens_total"],
        found["aipc_speculative_accepted_tokens_total"],
    )
    assert "smollm2" in model and 0 < accepted <= drafted, found
