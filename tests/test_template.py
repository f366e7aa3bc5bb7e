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
