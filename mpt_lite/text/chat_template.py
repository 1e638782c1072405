"""Chat prompts and replies: ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n`), the format of
mpt-7b-chat and mpt-30b-chat.

The template comes from tokenizer_config.json's ``chat_template`` when the checkpoint has one
(rendered with jinja2, as transformers does); otherwise the built-in ChatML template is used for
tokenizers that know the ChatML tokens (the mosaicml chat repos)."""
from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Sequence

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

# transformers' ChatML template, the format of mpt-7b-chat and mpt-30b-chat.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

BASE_ROLES = ("system", "user", "assistant")
# Roles some templates handle besides the base three; accepted only when the template names them.
EXTRA_ROLES = ("tool", "ipython", "function", "developer")


def check_messages(messages: Any) -> list[dict]:
    """A list of {"role": str, "content": str} dicts, or a TypeError/ValueError naming the bad one."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                        f"got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: pass at least one {'role': 'user', 'content': ...} message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TypeError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise ValueError(f"messages[{i}] has no {key!r}")
            if not isinstance(m[key], str):
                raise TypeError(f"messages[{i}][{key!r}] must be a string, got {type(m[key]).__name__}")
        if not m["role"]:
            raise ValueError(f"messages[{i}] has an empty role")
        out.append(m)
    return out


def template_roles(template: str) -> tuple[str, ...]:
    """The roles a template knows: system, user and assistant, plus those of EXTRA_ROLES that it
    names in quotes (a template that handles tool messages compares the role with 'tool')."""
    named = [r for r in EXTRA_ROLES if re.search(rf"""['"]{r}['"]""", template)]
    return BASE_ROLES + tuple(named)


def check_roles(messages: list[dict], template: str) -> None:
    """A ValueError naming the first message whose role the template does not know: a role is
    pasted into the prompt as it is, so an unknown one could carry a turn of its own."""
    roles = template_roles(template)
    for i, m in enumerate(messages):
        if m["role"] not in roles:
            shown = m["role"] if len(m["role"]) <= 40 else m["role"][:40] + "..."
            raise ValueError(f"messages[{i}].role must be one of {', '.join(roles)}; got {shown!r}")


def template_for(tokenizer: Any, chat_template: str | None = None) -> str:
    """The chat template to use: the one given, the tokenizer's own, or built-in ChatML."""
    if chat_template is not None:
        if not isinstance(chat_template, str) or not chat_template.strip():
            raise ValueError("chat_template must be a non-empty Jinja template string")
        return chat_template
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # transformers also allows {"default": ..., "tool_use": ...}
        own = own.get("default")
    elif isinstance(own, list):  # ... or [{"name": "default", "template": ...}]
        own = next((t.get("template") for t in own if isinstance(t, dict) and t.get("name") == "default"), None)
    if isinstance(own, str) and own.strip():
        return own
    if knows_chatml(tokenizer):
        return CHATML_TEMPLATE
    raise ValueError("this tokenizer has no chat_template and no ChatML tokens (<|im_start|>, <|im_end|>): "
                     "it is not a chat model; use a chat model (e.g. mpt-7b-chat) or pass chat_template=")


def knows_chatml(tokenizer: Any) -> bool:
    return all(tokenizer.token_to_id(t) is not None for t in (IM_START, IM_END))


def render_chat(tokenizer: Any, messages: Any, add_generation_prompt: bool = True,
                chat_template: str | None = None, **extra: Any) -> str:
    """The prompt text of a conversation."""
    messages = check_messages(messages)
    template = template_for(tokenizer, chat_template)
    check_roles(messages, template)
    variables = {
        "bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or "",
        "pad_token": tokenizer.pad_token or "", "unk_token": tokenizer.unk_token or "",
        **extra,
    }
    try:
        import jinja2  # noqa: F401
    except ImportError as err:
        if template != CHATML_TEMPLATE:
            raise ImportError("rendering this checkpoint's chat_template needs jinja2: pip install jinja2") from err
        return _render_chatml(messages, add_generation_prompt)
    return _render_jinja(template, messages, add_generation_prompt, variables)


def _render_chatml(messages: list[dict], add_generation_prompt: bool) -> str:
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def _render_jinja(template: str, messages: list[dict], add_generation_prompt: bool, variables: dict) -> str:
    """Renders as transformers does: a sandboxed environment, trim_blocks and lstrip_blocks,
    raise_exception() available to templates."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(f"the chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = _tojson
    try:
        compiled = env.from_string(template)
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
    except TemplateError as e:
        raise ValueError(f"the chat template could not be rendered: {e}") from e


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # as transformers' chat templates expect: non-ASCII kept, no HTML escaping
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def stop_settings(tokenizer: Any) -> tuple[list[int], list[str]]:
    """(eos ids, stop strings) that end an assistant turn: <|im_end|> (and a new <|im_start|>),
    as single tokens where the tokenizer has them and as text otherwise, plus the tokenizer's eos."""
    ids = []
    for token in (IM_END, IM_START, tokenizer.eos_token):
        i = tokenizer.token_to_id(token) if token else None
        if i is not None:
            ids.append(i)
    return list(dict.fromkeys(ids)), [IM_END, IM_START]
