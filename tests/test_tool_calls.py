"""Tool calling end to end: the official `openai` and `ollama` clients against `aipc serve` (uvicorn on a real
loopback port) on the real embedded SmolLM2, and the Python API.

SmolLM2 has no tool format of its own, so aipc describes the tools in the system message and constrains forced
calls to `{"tool_calls": [...]}` whose arguments match the function's JSON Schema (OpenVINO's structured output).
"""

from __future__ import annotations

import json

import jsonschema
import ollama
import pytest
from openai import OpenAI

from aipc.engine.events import Done, TextDelta, ToolCall
from aipc.server.settings import ServerSettings
from tests.test_server_support import LiveServer

MODEL = "smollm2:135m"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the local time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 40}},
            "required": ["zone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def server(model):
    with LiveServer(ServerSettings(), model) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _valid_weather_call(name: str, arguments: str) -> dict:
    assert name == "get_weather"
    args = json.loads(arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    return args


def test_a_named_tool_choice_yields_a_valid_call_for_every_seed(client):
    for seed in range(10):
        reply = client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice=NAMED, temperature=0.7, seed=seed
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "stop", (seed, choice)  # OpenAI's for a call it was told to make
        assert choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_") and len(call.id) == 29
        _valid_weather_call(call.function.name, call.function.arguments)


def test_a_streamed_named_call_comes_as_openai_streams_it(client):
    for seed in range(10):
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=ASK,
                tools=[WEATHER, TIME],
                tool_choice=NAMED,
                temperature=0.7,
                seed=seed,
                stream=True,
            )
        )
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        assert not any(d.content for d in deltas), "call markup reached content"
        parts = [p for d in deltas if d.tool_calls for p in d.tool_calls]
        first, *rest = parts
        assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
        assert first.function.name == "get_weather" and first.function.arguments == ""
        assert rest and all(p.id is None and p.function.name is None for p in rest)
        _valid_weather_call("get_weather", "".join(p.function.arguments for p in rest))
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    # the SDK's stream helper accumulates it as OpenAI's: calls, and content None (not "")
    with client.chat.completions.stream(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=NAMED, temperature=0
    ) as stream:
        final = stream.get_final_completion().choices[0].message
    assert final.content is None and final.tool_calls[0].function.name == "get_weather"


def test_required_calls_one_of_the_tools_with_valid_arguments(client):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    for seed in range(5):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[WEATHER, TIME],
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=0.7,
            seed=seed,
        )
        calls = reply.choices[0].message.tool_calls
        assert calls and reply.choices[0].finish_reason == "tool_calls"
        for call in calls:
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


@pytest.mark.parametrize("stream", [False, True])
def test_calls_cut_off_by_max_tokens_never_reach_content(client, stream):
    """A forced call stopped by the token limit ends with "length": the calls it completed come as tool_calls,
    the one it was writing is dropped, and its markup never becomes content."""
    seen = set()
    for max_tokens in (6, 12, 20, 40, 60):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[WEATHER, TIME],
            tool_choice="required",
            temperature=0.7,
            seed=1,
            max_tokens=max_tokens,
            stream=stream,
        )
        if stream:
            chunks = [c for c in reply if c.choices]
            content = "".join(c.choices[0].delta.content or "" for c in chunks)
            parts = [p for c in chunks for p in c.choices[0].delta.tool_calls or ()]
            calls = [
                (p.function.name, "".join(q.function.arguments for q in parts if q.index == p.index))
                for p in parts
                if p.id
            ]
            finish = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
        else:
            message = reply.choices[0].message
            content = message.content or ""
            calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or ()]
            finish = [reply.choices[0].finish_reason]
        assert content == "", (max_tokens, content)
        for name, arguments in calls:
            assert name in ("get_weather", "get_time") and isinstance(json.loads(arguments), dict)
        assert finish in (["length"], ["tool_calls"])
        seen.add((finish[0], bool(calls)))
    assert ("length", False) in seen  # the limit cut the first call off


def test_a_tool_result_fed_back_yields_a_text_answer(client):
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=NAMED, temperature=0
    ).choices[0]
    call = first.message.tool_calls[0]
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    # The 135M model was not trained on tool use and, left to `auto`, may ask again (which way depends on a near-tie
    # that speculation or cache state can flip); `none` keeps the tools and the result in the prompt and asks for
    # the answer, which is what an app does after running a tool.
    reply = client.chat.completions.create(
        model=MODEL, messages=history, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=80
    )
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls
    assert len(choice.message.content.split()) >= 3


def test_tool_choice_none_never_yields_a_call(client):
    for seed in range(5):
        reply = client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none", temperature=0.7, seed=seed, max_tokens=60
        )
        choice = reply.choices[0]
        assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
        assert choice.message.content


@pytest.mark.parametrize(
    ("extra", "param", "fragment"),
    [
        ({"tools": [{"type": "retrieval"}]}, "tools", "tools[0].type must be 'function'"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "nope",
        ),
        (
            {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
            "messages",
            "cannot be combined with tools",
        ),
    ],
)
def test_bad_tool_requests_are_a_400_naming_the_field(client, extra, param, fragment):
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ASK, **extra)
    assert fragment in info.value.message
    assert info.value.body["param"] == param


def test_the_ollama_client_gets_calls_with_arguments_as_objects(server):
    client = ollama.Client(host=server.url)
    reply = client.chat(model=MODEL, messages=ASK, tools=[WEATHER], options={"temperature": 0})
    calls = reply.message.tool_calls or []
    for call in calls:  # auto: this model may answer in text; any call it makes is constrained once it begins
        assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
        jsonschema.validate(call.function.arguments, WEATHER["function"]["parameters"])
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "tool_name": "get_weather", "content": '{"temperature": 21}'},
    ]
    answer = client.chat(model=MODEL, messages=history, options={"temperature": 0, "num_predict": 60})
    assert answer.message.content and not answer.message.tool_calls
    streamed = list(
        client.chat(model=MODEL, messages=history, options={"temperature": 0, "num_predict": 60}, stream=True)
    )
    assert "".join(c.message.content for c in streamed).strip() and not any(c.message.tool_calls for c in streamed)
    assert streamed[-1].done


BOOKING = {  # what pydantic (Field(ge=1, le=9)), MCP servers (format) and OpenAPI (nullable) write
    "type": "function",
    "function": {
        "name": "hotels.book",
        "parameters": {
            "type": "object",
            "properties": {
                "nights": {"type": "integer", "minimum": 1, "maximum": 9, "multipleOf": 1},
                "arrival": {"type": "string", "format": "date", "maxLength": 12},
                "note": {"type": "string", "nullable": True, "maxLength": 20},
            },
            "required": ["nights", "arrival", "note"],
            "additionalProperties": False,
        },
    },
}


def test_tools_with_validation_keywords_are_called_with_their_shape(client, server):
    """Keywords no grammar enforces are left to the model (described in the prompt); the call keeps the shape."""
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Book two nights from 2026-12-24."}],
        tools=[BOOKING],
        tool_choice="required",
        temperature=0,
        max_tokens=120,
    )
    call = reply.choices[0].message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert call.function.name == "hotels.book" and isinstance(args["nights"], int)
    assert isinstance(args["arrival"], str) and (args["note"] is None or isinstance(args["note"], str))
    # Ollama's clients: the same tool without "type", and a result that answers no call in the history
    history = [*ASK, {"role": "tool", "tool_name": "get_weather", "content": "21C, sunny"}]
    loose = dict(BOOKING)
    loose.pop("type")
    answer = ollama.Client(host=server.url).chat(
        model=MODEL, messages=history, tools=[loose], options={"temperature": 0, "num_predict": 20}
    )
    assert answer.done


def test_the_python_api_streams_tool_call_events(model):
    events = list(
        model.stream_chat(ASK, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False, temperature=0)
    )
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert len(calls) == 1 and calls[0].index == 0
    _valid_weather_call(calls[0].name, calls[0].arguments)
    assert not "".join(e.text for e in events if isinstance(e, TextDelta)).strip()
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "tool_calls" and done.usage.completion_tokens > 3


def test_streamed_text_keeps_control_tokens_as_the_ids_decode(model):
    """Tool markup is made of control tokens (`<|tool_call|>`), so the stream must keep them: generating past
    the end of turn, the streamed text is exactly what the generated ids decode to, `<|im_end|>` included."""
    events = list(model.stream("Say hi.", temperature=0, max_tokens=40, ignore_eos=True))
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert "<|im_end|>" in model.detokenize(events[-1].token_ids)
    assert text == model.detokenize(events[-1].token_ids)
