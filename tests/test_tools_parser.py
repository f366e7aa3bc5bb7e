"""Tool calls read out of generated text, whole and streamed, in every family's markup.

The samples are model outputs as the families' documentation shows them:
- Phi-4-mini: the model card's tool-enabled format (calls as `<|tool_call|>[...]<|/tool_call|>`), with the
  habits Gorilla's BFCL Phi handler records (a missing `<|/tool_call|>`, parallel calls not in a list); the
  `functools[...]` form vLLM's `examples/tool_chat_template_phi4_mini.jinja` asks for; and the bare list the
  PhiCookBook's FunctionCallingBasic sample gets after decoding with `skip_special_tokens=True`.
- Hermes: the Hermes 2 Pro model card (`{"arguments": ..., "name": ...}` in `<tool_call>` tags), the
  Hermes-Function-Calling README (a Python-dict body), Qwen's function-calling guide (two calls in a row).
- Generic: llama.cpp's generic handler (`{"tool_calls": [...]}`, `{"tool_call": {...}}`), fenced as small
  models write it.
"""

from __future__ import annotations

import json
import random

import pytest

from aipc.engine import tools
from aipc.engine.tools.formats import TemplateCaps, ToolFormat

WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
WEATHER_ARGS = '{"city":"Paris","unit":"celsius"}'


def fmt(name: str) -> ToolFormat:
    return ToolFormat(name, "native", TemplateCaps())


# (format, model output, expected content, expected [(name, arguments)])
SAMPLES = [
    (
        "phi4",
        '<|tool_call|>[{"name": "calculate_final_velocity", "arguments": {"height": 150, "initial_velocity": 0}}]'
        "<|/tool_call|>",
        "",
        [("calculate_final_velocity", '{"height":150,"initial_velocity":0}')],
    ),
    (  # BFCL: "Often the model will miss the `<|/tool_call|>`"
        "phi4",
        '<|tool_call|>[{"name": "calculate_final_velocity", "arguments": {"height": 150, "initial_velocity": 0}}]',
        "",
        [("calculate_final_velocity", '{"height":150,"initial_velocity":0}')],
    ),
    (  # BFCL: "For parallel tool call, Phi might not put them in a list"
        "phi4",
        '<|tool_call|>{"name": "calculate_sales_tax", "arguments": {"purchase_amount": 30.45, "city": "Chicago"}}, '
        '{"name": "calculate_sales_tax", "arguments": {"purchase_amount": 52.33, "city": "Sacramento"}}<|/tool_call|>',
        "",
        [
            ("calculate_sales_tax", '{"purchase_amount":30.45,"city":"Chicago"}'),
            ("calculate_sales_tax", '{"purchase_amount":52.33,"city":"Sacramento"}'),
        ],
    ),
    (
        "phi4",
        'functools[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}, '
        '{"name": "get_time", "arguments": {}}]',
        "",
        [("get_weather", WEATHER_ARGS), ("get_time", "{}")],
    ),
    (  # special tokens dropped by the detokenizer (PhiCookBook decodes with skip_special_tokens=True)
        "phi4",
        '[{"name": "get_match_result", "arguments": {"match": "Arsenal vs ManCity"}}]',
        "",
        [("get_match_result", '{"match":"Arsenal vs ManCity"}')],
    ),
    ("phi4", "Use functools.partial, or a list like [1, 2] and [{'a': 1}].", None, []),
    (  # vLLM's phi4 parser accepts "parameters" for "arguments"
        "phi4",
        'Checking the weather.\n<|tool_call|>[{"name": "get_weather", "parameters": {"city": "Paris"}}]<|/tool_call|>',
        "Checking the weather.",
        [("get_weather", '{"city":"Paris"}')],
    ),
    (  # Hermes 2 Pro model card
        "hermes",
        '<tool_call>\n{"arguments": {"symbol": "TSLA"}, "name": "get_stock_fundamentals"}\n</tool_call>',
        "",
        [("get_stock_fundamentals", '{"symbol":"TSLA"}')],
    ),
    (  # Hermes-Function-Calling README: a Python dict
        "hermes",
        "<tool_call>\n{'arguments': {'symbol': 'TSLA'}, 'name': 'get_current_stock_price'}\n</tool_call>",
        "",
        [("get_current_stock_price", '{"symbol":"TSLA"}')],
    ),
    (  # Qwen's function-calling guide: two calls
        "hermes",
        '<tool_call>\n{"name": "get_current_temperature", "arguments": {"location": "San Francisco, CA, USA"}}\n'
        "</tool_call>\n<tool_call>\n"
        '{"name": "get_temperature_date", "arguments": {"location": "San Francisco, CA, USA", "date": "2024-10-01"}}'
        "\n</tool_call>",
        "",
        [
            ("get_current_temperature", '{"location":"San Francisco, CA, USA"}'),
            ("get_temperature_date", '{"location":"San Francisco, CA, USA","date":"2024-10-01"}'),
        ],
    ),
    (  # Ollama's Qwen2.5 template writes several calls inside one block, one per line
        "hermes",
        f'I will look both up.\n\n<tool_call>\n{WEATHER}\n{{"name": "get_time", "arguments": {{"zone": "CET"}}}}\n'
        "</tool_call>\n",
        "I will look both up.",
        [("get_weather", WEATHER_ARGS), ("get_time", '{"zone":"CET"}')],
    ),
    ("hermes", "No tools needed: 2 + 2 = 4. <b>bold</b> <tool>", None, []),
    (  # llama.cpp's generic format
        "generic",
        '{"tool_calls": [{"name": "special_function", "arguments": {"arg1": 1}}]}',
        "",
        [("special_function", '{"arg1":1}')],
    ),
    ("generic", f'{{"tool_call": {WEATHER}}}', "", [("get_weather", WEATHER_ARGS)]),
    ("generic", f'```json\n{{"tool_calls": [{WEATHER}]}}\n```', "", [("get_weather", WEATHER_ARGS)]),
    ("generic", f"Let me check.\n```\n{WEATHER}\n```\nDone.", "Let me check.\nDone.", [("get_weather", WEATHER_ARGS)]),
    ("generic", 'Code: {"a": {"b": [1, 2]}} and a brace {.\n', None, []),
    (  # arguments given as a JSON string (OpenAI's own wire form) are kept verbatim
        "template",
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
        "",
        [("get_weather", '{"city": "Paris"}')],
    ),
    ("template", f"<tool_call>\n{WEATHER}\n</tool_call>", "", [("get_weather", WEATHER_ARGS)]),
]


def _stream(parser: tools.ToolCallParser, chunks: list[str]) -> tuple[str, list[tuple[str, str, str]]]:
    """Content and calls as a client rebuilds them from the deltas."""
    events = [e for chunk in chunks for e in parser.feed(chunk)] + parser.finish()
    content = "".join(e.text for e in events if isinstance(e, tools.ContentDelta))
    calls: dict[int, list[str]] = {}
    for e in events:
        if isinstance(e, tools.ToolCallDelta):
            if e.id is not None:
                assert e.index not in calls and e.name and e.arguments == ""
                calls[e.index] = [e.id, e.name, ""]
            else:
                assert e.name is None
                calls[e.index][2] += e.arguments
    assert sorted(calls) == list(range(len(calls)))
    return content, [tuple(calls[i]) for i in sorted(calls)]


def _chunkings(text: str, rng: random.Random, n: int):
    yield [text]
    yield list(text)
    for cut in range(1, len(text)):
        yield [text[:cut], text[cut:]]
    for _ in range(n):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12))))
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@pytest.mark.parametrize(("family", "text", "content", "calls"), SAMPLES)
def test_whole_outputs_parse_into_content_and_calls(family, text, content, calls):
    result = tools.parse(text, fmt(family))
    assert [(c.name, c.arguments) for c in result.calls] == calls
    assert result.content == (text if content is None else content)
    for call in result.calls:
        assert call.id.startswith("call_") and len(call.id) == 29 and call.id[5:].isalnum()
        assert isinstance(json.loads(call.arguments), dict)
    assert len({c.id for c in result.calls}) == len(result.calls)
    assert result.finish_reason("stop") == ("tool_calls" if calls else "stop")


@pytest.mark.parametrize(("family", "text", "content", "calls"), SAMPLES)
def test_any_chunking_streams_the_same_result_and_markup_never_leaks(family, text, content, calls):
    expected_content = text if content is None else content
    rng = random.Random(hash(text) & 0xFFFF)
    for chunks in _chunkings(text, rng, 150):
        got_content, got_calls = _stream(tools.ToolCallParser(fmt(family)), chunks)
        assert got_content == expected_content, chunks
        assert [(name, args) for _, name, args in got_calls] == calls, chunks
        if calls:
            for marker in ("<tool_call>", "</tool_call>", "<|tool_call|>", "functools[", '"tool_calls"', "```"):
                assert marker not in got_content


def test_content_streams_as_soon_as_it_cannot_open_a_call():
    parser = tools.ToolCallParser(fmt("hermes"))
    assert parser.feed("The answer ") == [tools.ContentDelta("The answer")]  # the space may precede a call
    assert parser.feed("is 4. <tool") == [tools.ContentDelta(" is 4.")]
    assert parser.feed("box>!") == [tools.ContentDelta(" <toolbox>!")]
    assert parser.finish() == []
    assert parser.content == "The answer is 4. <toolbox>!"


def test_in_call_marks_where_the_opener_was_seen():
    parser = tools.ToolCallParser(fmt("phi4"))
    parser.feed("Let me see. <|tool_")
    assert not parser.in_call and parser.opened_at is None
    parser.feed('call|>[{"name": "get_weather", ')
    assert parser.in_call and parser.opened_at == len("Let me see. ")
    events = parser.feed('"arguments": {"city": "Paris"}}]<|/tool_call|>')
    assert not parser.in_call
    assert [type(e) for e in events] == [tools.ToolCallDelta, tools.ToolCallDelta]
    assert events[0].openai() == {
        "index": 0,
        "id": events[0].id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert events[1].openai() == {"index": 0, "function": {"arguments": '{"city":"Paris"}'}}


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par', '<tool_call>\n{"name": "get_weather"'),
        ("<tool_call>\nnot json at all\n</tool_call> after", "<tool_call>\nnot json at all\n</tool_call> after"),
        ('<tool_call>{"name": "delete_everything", "arguments": {}}</tool_call>', "<tool_call>{"),
        ('<tool_call>{"name": "get_weather", "arguments": [1, 2]}</tool_call>', "<tool_call>{"),
        (  # a tool's definition echoed back is not a call
            '<tool_call>{"name": "get_weather", "description": "Weather", "parameters": {}}</tool_call>',
            "<tool_call>{",
        ),
    ],
)
def test_unparseable_or_unknown_calls_are_left_as_content_or_dropped(text, content):
    kept = tools.parse(text, fmt("hermes"), names={"get_weather"})
    assert kept.calls == () and kept.content.startswith(content) and kept.content.strip() == text.strip()
    dropped = tools.parse("Before. " + text, fmt("hermes"), names={"get_weather"}, invalid="drop")
    assert dropped.calls == () and dropped.content.startswith("Before.") and "<tool_call>" not in dropped.content


def test_a_valid_call_next_to_an_invalid_one_is_kept():
    text = f"<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n{{oops}}\n</tool_call>"
    result = tools.parse(text, fmt("hermes"))
    assert [c.name for c in result.calls] == ["get_weather"]
    assert result.content == "<tool_call>\n{oops}\n</tool_call>"


def test_parallel_calls_off_keeps_the_first_call():
    text = f'<|tool_call|>[{WEATHER}, {{"name": "get_time", "arguments": {{}}}}]<|/tool_call|>'
    parser = tools.ToolCallParser(fmt("phi4"), parallel=False)
    parser.feed(text)
    parser.finish()
    assert [c.name for c in parser.calls] == ["get_weather"] and parser.dropped == 1


TIME = '{"name": "get_time", "arguments": {}}'


@pytest.mark.parametrize(
    ("family", "text", "kept"),
    [
        # calls complete before the cut are kept, the one cut off is dropped
        ("generic", '{"tool_calls": [' + WEATHER + ", " + TIME + ', {"name": "get_', ["get_weather", "get_time"]),
        ("phi4", "<|tool_call|>[" + WEATHER + ', {"name": "get_time", "argu', ["get_weather"]),
        ("hermes", "<tool_call>\n" + WEATHER + "\n</tool_call>\n<tool_call>\n" + TIME[:20], ["get_weather"]),
        ("hermes", "<tool_call>\n" + WEATHER, ["get_weather"]),  # the closing tag cut off: the call is whole
        # a cut inside a call's arguments keeps nothing of it, even where its open brackets would close
        ("generic", '{"tool_calls": [{"name": "get_weather", "arguments": {"city": {"a": 1}', []),
        ("phi4", '<|tool_call|>[{"name": "get_weather", "arguments": {"list": [{"a": 1}', []),
        ("generic", '{"tool_calls": [{"name": "get_weather",\n   }', []),
    ],
)
def test_a_call_cut_off_by_the_token_limit_keeps_its_complete_calls_and_never_becomes_content(family, text, kept):
    for pieces in ([text], [text[:7], text[7:30], text[30:]]):
        parser = tools.ToolCallParser(fmt(family), names={"get_weather", "get_time"})
        events = [e for piece in pieces for e in parser.feed("Sure. " * (piece is pieces[0]) + piece)]
        events += parser.finish(truncated=True)
        content = "".join(e.text for e in events if isinstance(e, tools.ContentDelta))
        assert content == "Sure.", content
        assert [c.name for c in parser.calls] == kept
    # the same text from a generation that ended by itself is left as content, as any invalid markup is
    if not kept:
        assert "get_weather" in tools.parse(text, fmt(family), names={"get_weather", "get_time"}).content


def test_finish_reason_is_tool_calls_only_for_a_normal_end():
    assert tools.finish_reason("stop", True) == "tool_calls"
    assert tools.finish_reason("length", True) == "length"
    assert tools.finish_reason("stop", False) == "stop"


def test_the_parser_refuses_text_after_finish():
    parser = tools.ToolCallParser(fmt("generic"))
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")


@pytest.mark.parametrize("family", ["phi4", "hermes", "generic", "template"])
@pytest.mark.parametrize("parallel", [True, False])
def test_forced_calls_parse_after_the_prefilled_opener(family, parallel):
    """What a constrained generation writes after `begin` (the JSON, with or without `end`) is one call."""
    request = tools.parse_request(
        [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "required",
        parallel,
    )
    grammar = tools.call_grammar(request, fmt(family))
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    value = [call] if grammar.schema.get("type") == "array" else call
    for tail in ("", grammar.end):
        parser = tools.ToolCallParser.for_request(request, fmt(family), grammar)
        assert parser.in_call == bool(grammar.begin)
        content, calls = _stream(parser, [json.dumps(value)[:9], json.dumps(value)[9:] + tail])
        assert content == "" and [(n, a) for _, n, a in calls] == [("get_weather", '{"city":"Paris"}')]


@pytest.mark.parametrize("family", ["phi4", "hermes", "generic", "template"])
def test_each_formats_canonical_opener_opens_a_call_and_its_pattern_matches_variants(family):
    import re

    begin = tools.formats.MARKUP[family].begin
    parser = tools.ToolCallParser(fmt(family))
    parser.feed(begin)
    assert parser.in_call == bool(begin)
    for opener in fmt(family).openers:
        spaced = "\n ".join(opener.pieces)
        assert re.fullmatch(opener.regex, opener.text) and re.fullmatch(opener.regex, spaced)
        variant = tools.ToolCallParser(fmt(family))
        assert variant.feed(spaced) == [] and variant.in_call
