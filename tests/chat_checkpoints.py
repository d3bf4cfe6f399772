"""A tiny random checkpoint with chat special tokens and chat templates of
real-world shapes (ChatML as Qwen2 writes it, Llama 3, Llama 2 / Mistral
with raise_exception, and one using tojson, namespace and loop controls)."""
from __future__ import annotations

import functools
import json
import os

from model_checkpoints import _ROOT, EOS, SENTENCES, build, vocab_size

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>"]

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

# whitespace-heavy: trim_blocks and lstrip_blocks decide what it renders
LLAMA2 = """{{ bos_token }}
{% for message in messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {{ '[INST] ' + message['content'] + ' [/INST]' }}
    {% elif message['role'] == 'assistant' %}
        {{ message['content'] + eos_token }}
    {% else %}
        {{ raise_exception('Only user and assistant roles are supported!') }}
    {% endif %}
{% endfor %}
"""

TOJSON = """{%- set ns = namespace(n=0) -%}
{% for m in messages %}
    {% if m.role == 'system' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
{{ ns.n }}: {{ m | tojson }} {{ m.content | tojson(indent=2) }}
{% endfor %}
{% if add_generation_prompt %}>>{% endif %}"""

TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "llama2": LLAMA2, "tojson": TOJSON}


@functools.cache
def chat_checkpoint() -> str:
    """A llama checkpoint whose tokenizer has the chat special tokens; its
    tokenizer_config.json carries the ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    directory = os.path.join(_ROOT, "llama-chat")
    build("llama-gqa-tied", directory, max_position_embeddings=512)
    # the same vocabulary size as the model's, with the chat tokens among the special ones
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size(), special_tokens=[EOS, *SPECIALS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 3, trainer)
    assert tok.get_vocab_size() == vocab_size()
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                   "eos_token": "<|endoftext|>", "chat_template": CHATML}, f)
    return directory
