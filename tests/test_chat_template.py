"""The chat template rendered without transformers gives exactly transformers' own text."""

from __future__ import annotations

import json

import pytest

from rlaif.generation.chat_template import ChatTemplate, ChatTemplateError

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [
        {"role": "system", "content": "You are an impartial judge."},
        {"role": "user", "content": "Which answer is better?\n<answer_a>\nfour\n</answer_a>"},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke about ünïcödé."},
    ],
]


def test_rendering_matches_transformers_apply_chat_template(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    template = ChatTemplate.from_model_dir(smollm2_dir)
    for messages in CONVERSATIONS:
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert template.render(messages) == expected
        assert template.render(messages, prefill="[[") == expected + "[["


def test_a_template_in_tokenizer_config_and_its_special_tokens_are_used(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": {"content": "<s>"},
                "eos_token": "</s>",
                "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}"
                "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
            }
        )
    )
    template = ChatTemplate.from_model_dir(tmp_path)
    assert template.render([{"role": "user", "content": "hi"}]) == "<s>[user]hi</s>[assistant]"


def test_a_folder_without_a_chat_template_is_refused_naming_it(tmp_path):
    with pytest.raises(ChatTemplateError, match=str(tmp_path)):
        ChatTemplate.from_model_dir(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="chat_template.jinja:1: not a valid Jinja2 template"):
        ChatTemplate.from_model_dir(tmp_path)
