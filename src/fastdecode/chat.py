"""Chat templates: a conversation rendered to a prompt the way the checkpoint was trained on.

A chat template is a Jinja2 program shipped with the checkpoint
(``tokenizer_config.json``'s ``chat_template``, the ``chat_template.jinja``
file transformers >= 4.43 writes, or GGUF's ``tokenizer.chat_template``).
It is rendered under Hugging Face's conventions, so the text equals
``transformers``' ``tokenizer.apply_chat_template(messages, tokenize=False)``
(source: ``transformers/utils/chat_template_utils.py``):

- an ``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and
  ``lstrip_blocks``, the ``loopcontrols`` extension;
- ``raise_exception(message)`` (raises :class:`ChatTemplateError`),
  ``strftime_now(format)``, a ``tojson`` filter that is ``json.dumps``
  (no HTML escaping, ``ensure_ascii=False``, ``indent``/``separators``/``sort_keys``);
- variables ``messages``, ``add_generation_prompt``, ``tools``, ``documents``,
  the tokenizer's special tokens as text (``bos_token``, ``eos_token``,
  ``unk_token``, ``pad_token``, ...), and any extra keyword;
- message keys whose value is None are dropped (as transformers does).

The rendered text is tokenized without adding special tokens: the template
writes any bos itself.
"""
from __future__ import annotations

import functools
import json
import os
from datetime import datetime

import numpy as np

from .model.config import read_json

__all__ = ["ChatTemplate", "ChatTemplateError", "template_of", "end_of_turn_ids", "chat_ids", "prepare"]

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class ChatTemplateError(ValueError):
    """A template is missing, malformed, or refused the conversation (``raise_exception``)."""


@functools.lru_cache(maxsize=32)
def _compile(source: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"the chat template is not valid Jinja2 (line {exc.lineno}): {exc.message}") from None


def _messages(messages) -> list:
    """Validated copies: a list of {"role": str, ...} dicts, None values dropped."""
    if isinstance(messages, (str, dict)) or not hasattr(messages, "__iter__"):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts; got "
                        f"{type(messages).__name__}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TypeError(f"messages[{i}] must be a dict with 'role' and 'content'; got {type(m).__name__}")
        if not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{i}] has no 'role' string")
        out.append({k: v for k, v in m.items() if v is not None})
    return out


class ChatTemplate:
    """A compiled chat template and the special tokens it may refer to.

    ``source``: the Jinja2 text. ``special_tokens``: {"bos_token": "<s>", ...}
    as text (the tokenizer_config.json entries).
    """

    def __init__(self, source: str, special_tokens: dict | None = None):
        if not isinstance(source, str) or not source.strip():
            raise ChatTemplateError("a chat template must be a non-empty str")
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        self._template = _compile(source)

    def render(self, messages, add_generation_prompt: bool = True, **kwargs) -> str:
        """The prompt text for ``messages`` (``[{"role": ..., "content": ...}, ...]``).

        ``add_generation_prompt``: end with the header of an assistant turn
        (Hugging Face's default is False; a chat turn wants True). Extra
        keywords are template variables (``tools``, ``documents``, ...).
        Raises :class:`ChatTemplateError` when the template refuses.
        """
        import jinja2

        context = {**self.special_tokens, "tools": None, "documents": None, **kwargs}
        try:
            return self._template.render(messages=_messages(messages), add_generation_prompt=add_generation_prompt,
                                         **context)
        except jinja2.exceptions.TemplateError as exc:
            raise ChatTemplateError(f"the chat template refused the conversation: {exc}") from None


def _special_tokens(config: dict) -> dict:
    out = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def _tokenizer_specials(tokenizer) -> dict:
    """bos_token/eos_token as text from the tokenizer's ids (a GGUF has no tokenizer_config.json)."""
    out = {}
    for key in ("bos_token", "eos_token"):
        i = getattr(tokenizer, key + "_id", None)
        if i is not None:
            out[key] = tokenizer.decode([i], skip_special_tokens=False)
    return out


def _pick(source, name: str | None, where: str) -> str | None:
    """tokenizer_config.json's chat_template: a str, or a list of {"name", "template"} (named templates)."""
    if source is None or isinstance(source, str):
        return source
    if isinstance(source, list):
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        key = name or "default"
        if key not in named:
            raise ChatTemplateError(f"{where}: no chat template named {key!r}; it has {sorted(map(str, named))}")
        return named[key]
    raise ChatTemplateError(f"{where}: chat_template must be a str or a list of named templates")


def template_of(model, template: str | None = None, name: str | None = None) -> ChatTemplate:
    """The chat template of ``model``: ``template`` (Jinja2 text) when given,
    else the checkpoint's (``chat_template.jinja``, ``tokenizer_config.json``'s
    ``chat_template`` (``name`` picks one of several named ones), or a GGUF's
    ``tokenizer.chat_template``). Raises
    :class:`ChatTemplateError` when there is none."""
    path = getattr(model, "path", None)
    config = read_json(os.path.join(path, "tokenizer_config.json")) if path and os.path.isdir(path) else {}
    special = {**_tokenizer_specials(model.tokenizer), **_special_tokens(config)}
    if template is None:
        jinja = os.path.join(path, "chat_template.jinja") if path and os.path.isdir(path) else None
        if jinja and os.path.isfile(jinja) and name is None:
            with open(jinja, encoding="utf-8") as f:
                template = f.read()
        else:
            template = _pick(config.get("chat_template"), name, f"{path}/tokenizer_config.json") \
                or getattr(model.tokenizer, "chat_template", None)  # a GGUF's tokenizer.chat_template
    if template is None:
        raise ChatTemplateError(
            f"{path or 'this model'} has no chat template (no chat_template in tokenizer_config.json, no "
            "chat_template.jinja); pass one as template=, or use generate() with a prompt of your own")
    return ChatTemplate(template, special)


_SENTINEL = "\u2063fastdecode-end-of-turn-probe\u2063"


def end_of_turn_ids(template: ChatTemplate, tokenizer) -> tuple:
    """The special token(s) the template writes right after an assistant
    message (``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3), found by
    rendering a probe conversation; () when the next text is not a special
    token (then the checkpoint's eos is the only stop)."""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = template.render(probe, add_generation_prompt=False)
    except ChatTemplateError:
        return ()
    at = text.find(_SENTINEL)
    if at < 0 or tokenizer is None:
        return ()
    after = text[at + len(_SENTINEL):]
    ids = tokenizer.encode(after, add_special_tokens=False)[:1]
    # a special token decodes to nothing when special tokens are skipped
    if ids and after.strip() and tokenizer.decode(ids, skip_special_tokens=True) == "" and \
            tokenizer.decode(ids, skip_special_tokens=False).strip():
        return (ids[0],)
    return ()


def chat_ids(model, template: ChatTemplate, messages) -> list:
    """The prompt ids of a chat turn: the rendered text, tokenized without
    adding special tokens (the template writes bos itself), as transformers'
    ``apply_chat_template(..., tokenize=True)``."""
    if model.tokenizer is None:
        raise ValueError(f"{model.path}: no tokenizer.json, so no chat (chat templates render text)")
    return model.tokenizer.encode(template.render(messages), add_special_tokens=False)


def with_stops(gen, ids) -> "GenerationConfig":
    """gen with the token ids added to its stop list."""
    import dataclasses

    if not ids:
        return gen
    stop = gen.stop
    stop = [] if stop is None else [stop] if isinstance(stop, (str, int, np.integer)) else list(stop)
    return dataclasses.replace(gen, stop=stop + [i for i in ids if i not in stop])


def prepare(model, messages, gen, template: str | None = None) -> tuple:
    """(prompt ids, settings with the end-of-turn stop) of one chat turn."""
    t = template_of(model, template)
    return chat_ids(model, t, messages), with_stops(gen, end_of_turn_ids(t, model.tokenizer))
