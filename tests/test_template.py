import pytest

from aipc.engine import template
from aipc.errors import UsageError

# Phi-3-mini-4k-instruct's chat template, as its tokenizer_config.json ships it.
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}"
    "{% endif %}"
)


def test_renders_phi3_template_with_generation_prompt():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = template.render(PHI3_TEMPLATE, messages, eos_token="<|endoftext|>")
    assert text == "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"


def test_fallback_is_chatml():
    text = template.render(None, [{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_sandbox_blocks_python_internals():
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(UsageError, match="chat template failed to render"):
        template.render(evil, [{"role": "user", "content": "x"}])


def test_sandbox_blocks_mutating_inputs():
    evil = "{% set _ = messages.append({'role': 'user', 'content': 'injected'}) %}{{ messages|length }}"
    with pytest.raises(UsageError, match="chat template failed to render"):
        template.render(evil, [{"role": "user", "content": "x"}])


def test_raise_exception_becomes_a_usage_error():
    tpl = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok"
    assert template.render(tpl, [{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(UsageError, match="first must be user"):
        template.render(tpl, [{"role": "assistant", "content": "x"}])


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "user"}], "messages[0] must be an object with 'role' and 'content'"),
        ([{"role": "tool", "content": "x"}], "valid roles are system, user, assistant"),
        ([{"role": "user", "content": 3}], "messages[0].content must be a string"),
    ],
)
def test_validate_messages(messages, fragment):
    with pytest.raises(UsageError) as info:
        template.validate_messages(messages)
    assert fragment in str(info.value)


# --- resource limits: templates come from model files, so they are bounded in time and size -------------------
@pytest.mark.parametrize(
    ("evil", "fragment"),
    [
        ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", "to render"),
        (  # nested loops over one value: no call, no attribute access, only template lines
            "{% set r = range(100000) %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}",
            "to render",
        ),
        ("{{ 'x' * 4000000000 }}", "multiplied"),
        ("{{ ['x'] * 4000000000 }}", "multiplied"),
        ("{{ 'x'.center(4000000000) }}", "size"),
        ("{{ 'x'|center(4000000000) }}", "size"),
        ("{{ '%4000000000s' % 'x' }}", "wide"),
        ("{{ '{:>4000000000}'.format('x') }}", "wide"),
        ("{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", ""),
        ("{{ ('x' * 3000000).replace('', 'yy') }}", "string"),
        ("{{ range(100000)|join('x' * 1000) }}", "string"),
        ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "rendered more"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursed"),
        ("{{ 10 ** 100000000 }}", "power"),
        ("{{ ((10 ** 200) ** 200) ** 200 }}", "power"),
    ],
)
def test_template_bombs_are_stopped_quickly_with_one_line(evil, fragment):
    import time

    started = time.monotonic()
    with pytest.raises(UsageError) as info:
        template.render(evil, [{"role": "user", "content": "x"}])
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert "chat template" in message and "\n" not in message
    assert fragment in message
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_ordinary_templates_render_within_the_limits():
    tpl = "{% for m in messages %}{{ m['role'] ~ ': ' ~ m['content'] | trim }}\n{% endfor %}{{ 'x' * 10 }}"
    messages = [{"role": "user", "content": "hello " * 10000}] * 50
    text = template.render(tpl, messages)
    assert text.endswith("x" * 10) and text.count("user: ") == 50


def test_tools_reach_the_template_as_transformers_passes_them():
    tpl = "{% if tools is none %}none{% else %}{% for t in tools %}{{ t.function.name }}{% endfor %}{% endif %}"
    messages = [{"role": "user", "content": "x"}]
    assert template.render(tpl, messages) == "none"
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    assert template.render(tpl, messages, tools=tools) == "get_weather"
    assert template.render("{{ tools | tojson(indent=2, sort_keys=True) }}", messages, tools=[{"b": 1, "a": "é"}]) == (
        '[\n  {\n    "a": "é",\n    "b": 1\n  }\n]'
    )


def test_a_template_failing_in_python_is_a_one_line_usage_error():
    with pytest.raises(UsageError) as info:
        template.render("{{ 'x' + messages[0]['content'] }}", [{"role": "assistant", "content": None}])
    assert "chat template failed to render: TypeError" in str(info.value) and "\n" not in str(info.value)
