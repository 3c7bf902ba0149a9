"""Chat-template helpers: format instructions as prompts, find post-instruction tokens, encode.

Every prompt given to a model goes through the tokenizer's own chat template
(:func:`format_prompt`), so a formatted prompt already contains the template's BOS and turn
markers; :func:`encode_prompts` therefore tokenizes with ``add_special_tokens=False`` and
left-pads, which is the layout the runtime's position contract assumes.

Formatting is a pure function of its input: templates that write today's date (Llama-3.x:
``Today Date: ...`` from ``strftime_now`` unless ``date_string`` is given) are rendered with
``date_string=PINNED_DATE_STRING``, so a prompt gives the same tokens on every day.
:func:`set_chat_template` swaps in a named template such as the authors' released Llama-3
format without the system header (``"llama3-no-system-header"``).
"""

from __future__ import annotations

import copy
import warnings
import weakref
from typing import Any

import torch

from steerscope.errors import SteerscopeError

# Sentinels unlikely to occur in any template or to merge with template text.
# The user sentinel ends with a letter: pre-tokenizers split letters from punctuation, so it
# does not merge with template text such as "<end_of_turn>" when that is not a special token.
_SENTINEL_USER = "XQJZSTEERSCOPEUSERXQJZ"
_SENTINEL_SYSTEM = "XQJZSTEERSCOPESYSTEMXQJZ"

# The date Llama-3.x chat templates write into their system block ("Today Date: ...") when not
# given one: the templates' own fallback date, passed as ``date_string`` to every rendering so
# that the same prompt gives the same tokens on every day.
PINNED_DATE_STRING = "26 Jul 2024"

# The prompt format of the authors' released code for Llama-3 (arXiv 2604.08524, after Arditi
# et al.): BOS, the turns, no "Cutting Knowledge Date / Today Date" system header; a system
# message becomes its own system turn. Contents are not trimmed.
LLAMA3_NO_SYSTEM_HEADER_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
NAMED_CHAT_TEMPLATES = {"llama3-no-system-header": LLAMA3_NO_SYSTEM_HEADER_TEMPLATE}
# tokens a named template needs as single (special) tokens of the tokenizer
_TEMPLATE_TOKENS = {
    "llama3-no-system-header": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
}

# Per-tokenizer caches, keyed by tokenizer object (weakly) then by chat template text, so a
# user who edits ``tokenizer.chat_template`` gets fresh answers.
_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], Any]] = weakref.WeakKeyDictionary()
# The template a tokenizer came with, kept when set_chat_template replaces it
_OWN_TEMPLATE: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def check_chat_template(tokenizer) -> str:
    """The tokenizer's chat template as text (cache key); raise when there is none."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise SteerscopeError(
            f"tokenizer '{_name(tokenizer)}' has no chat template",
            "pass a chat model or set tokenizer.chat_template",
        )
    return template if isinstance(template, str) else repr(template)


def check_formatted_prompts(prompts, what: str = "prompts") -> list[str]:
    """``prompts`` as a list of strings (already chat-formatted); a one-line error for one
    string, an empty list or a non-string item."""
    if isinstance(prompts, str):
        raise SteerscopeError(f"{what} must be a list of formatted prompts, not one string",
                              "wrap it in a list")
    prompts = list(prompts)
    if not prompts:
        raise SteerscopeError(f"no {what} given", "pass at least one formatted prompt")
    for p in prompts:
        if not isinstance(p, str):
            raise SteerscopeError(f"{what} must be strings, got {type(p).__name__}",
                                  "format prompts with format_prompt first")
    return prompts


def _cached(tokenizer, what: str, compute):
    key = (what, check_chat_template(tokenizer))
    try:
        per_tok = _CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable / not hashable: no caching
        return compute()
    if key not in per_tok:
        per_tok[key] = compute()
    return per_tok[key]


def _warn_if_dated(tokenizer) -> None:
    """Warn (once per tokenizer and template) when the template reads the clock but not
    ``date_string``: its prompts would then change from day to day."""

    def compute() -> bool:
        template = check_chat_template(tokenizer)
        dated = "strftime_now" in template and "date_string" not in template
        if dated:
            warnings.warn(
                f"the chat template of '{_name(tokenizer)}' writes today's date (strftime_now) "
                "and ignores date_string, so its prompts change from day to day; set "
                "tokenizer.chat_template (or model.chat_template) to a template without it",
                stacklevel=4)
        return dated

    _cached(tokenizer, "dated", compute)


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    _warn_if_dated(tokenizer)
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt,
        date_string=PINNED_DATE_STRING,
    )
    if not isinstance(text, str):  # defensive: some versions return a list for batched input
        raise SteerscopeError(
            f"chat template of '{_name(tokenizer)}' did not render to a string",
            "check the tokenizer's chat_template",
        )
    return text


def check_template_renders(tokenizer, where: str) -> None:
    """Render a one-message chat once with the tokenizer's chat template (none: nothing to
    check), so that a template with a Jinja syntax error, one the sandbox blocks or one that
    raises fails when the model loads, in one line naming ``where``, not at the first prompt."""
    if not getattr(tokenizer, "chat_template", None):
        return
    try:
        _render(tokenizer, [{"role": "user", "content": "Hello."}], add_generation_prompt=True)
    except SteerscopeError:
        raise
    except Exception as exc:  # jinja2 syntax/security/undefined errors, raise_exception(...)
        lines = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
        raise SteerscopeError(
            f"the chat template of {where} does not render a one-message chat ({detail})",
            "fix chat_template in the model's tokenizer_config.json or chat_template.jinja, "
            "or set model.chat_template (--chat-template) to a working one") from None


def resolve_chat_template(spec: str) -> str:
    """The Jinja text of a chat-template spec: a name of :data:`NAMED_CHAT_TEMPLATES` or
    Jinja text itself (anything containing ``{{`` or ``{%``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise SteerscopeError("the chat template is empty",
                              f"name one of {', '.join(NAMED_CHAT_TEMPLATES)} or give Jinja text")
    if spec.strip() in NAMED_CHAT_TEMPLATES:
        return NAMED_CHAT_TEMPLATES[spec.strip()]
    if "{{" in spec or "{%" in spec:
        return spec
    raise SteerscopeError(f"unknown chat template '{spec}'",
                          f"name one of {', '.join(NAMED_CHAT_TEMPLATES)} or give Jinja text")


def set_chat_template(tokenizer, spec: str | None):
    """Replace ``tokenizer.chat_template`` by :func:`resolve_chat_template` of ``spec`` (None:
    keep the tokenizer's own) and return the tokenizer. A named template is checked against
    the tokenizer: the turn markers it writes must be single tokens of its vocabulary."""
    if spec is None:
        return tokenizer
    template = resolve_chat_template(spec)
    vocab = tokenizer.get_vocab()
    missing = [t for t in _TEMPLATE_TOKENS.get(spec.strip(), ()) if t not in vocab]
    if missing:
        raise SteerscopeError(
            f"chat template '{spec}' needs the tokens {', '.join(missing)}, which tokenizer "
            f"'{_name(tokenizer)}' does not have",
            "use it with a Llama-3 model, or keep the tokenizer's own template")
    try:
        _OWN_TEMPLATE.setdefault(tokenizer, getattr(tokenizer, "chat_template", None))
    except TypeError:  # not weak-referenceable: its own template cannot be restored
        pass
    tokenizer.chat_template = template
    check_template_renders(tokenizer, f"chat template '{spec}'")
    return tokenizer


def with_own_chat_template(tokenizer):
    """The tokenizer with the chat template it came with (before :func:`set_chat_template`
    replaced it): a shallow copy when it was replaced, else ``tokenizer`` itself. E.g. the
    Llama-3 Hub template with its system block (date pinned) for the NTP/PO data, while DIM
    and patching keep ``llama3-no-system-header`` (the released code's split)."""
    own = _OWN_TEMPLATE.get(tokenizer) if _weakrefable(tokenizer) else None
    if own is None or own == getattr(tokenizer, "chat_template", None):
        return tokenizer
    out = copy.copy(tokenizer)
    out.chat_template = own
    return out


def _weakrefable(obj) -> bool:
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


def assistant_turn(tokenizer, instruction: str, response: str) -> str:
    """The text the chat template writes after :func:`format_prompt` ``(tokenizer,
    instruction)`` for a conversation whose assistant turn is ``response``: the response as
    the template renders it (e.g. trimmed) and the template's end of turn (Llama-3
    ``<|eot_id|>``, Gemma ``<end_of_turn>\\n``, ChatML ``<|im_end|>\\n``). The released
    code's NTP/PO targets (``learn_sv.py`` tokenizes the whole conversation)."""
    prompt = format_prompt(tokenizer, instruction)
    full = _render(tokenizer, [{"role": "user", "content": instruction},
                               {"role": "assistant", "content": response}],
                   add_generation_prompt=False)
    if not full.startswith(prompt):
        raise SteerscopeError(
            f"the chat template of '{_name(tokenizer)}' does not render a conversation as the "
            "prompt followed by the assistant turn",
            "turn vectors.preference.end_of_turn off for this model")
    return full[len(prompt):]


def template_supports_system(tokenizer) -> bool:
    """Whether the chat template renders a system turn (no exception and the text appears).

    Cached per tokenizer object and chat template.
    """

    def compute() -> bool:
        messages = [
            {"role": "system", "content": _SENTINEL_SYSTEM},
            {"role": "user", "content": _SENTINEL_USER},
        ]
        try:
            text = _render(tokenizer, messages, add_generation_prompt=True)
        except Exception:  # template raises on a system role (e.g. Gemma 2)
            return False
        return _SENTINEL_SYSTEM in text

    return bool(_cached(tokenizer, "supports_system", compute))


def format_prompt(
    tokenizer,
    instruction: str,
    *,
    system: str | None = None,
    response: str | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """Render one user turn with the tokenizer's chat template (a string, not tokens).

    ``system``: a system turn when the template supports one, else prepended to the user turn
    as ``system + "\\n\\n" + instruction``. ``response``: teacher forcing, the returned string
    is exactly ``format_prompt(..., response=None) + response``.
    """
    check_chat_template(tokenizer)
    if not isinstance(instruction, str):
        raise SteerscopeError(
            f"instruction must be a string, got {type(instruction).__name__}",
            "pass the instruction text",
        )
    if response is not None and not add_generation_prompt:
        raise SteerscopeError(
            "a response needs the generation prompt before it",
            "leave add_generation_prompt=True when passing response",
        )
    messages: list[dict] = []
    content = instruction
    if system is not None:
        if template_supports_system(tokenizer):
            messages.append({"role": "system", "content": system})
        else:
            content = f"{system}\n\n{instruction}"
    messages.append({"role": "user", "content": content})
    text = _render(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    if response is not None:
        text += response
    return text


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def post_instruction_tokens(tokenizer) -> list[int]:
    """Token ids of the template text that follows the user's instruction.

    E.g. ``<|im_end|>\\n<|im_start|>assistant\\n`` for ChatML. These are the paper's
    post-instruction positions: the last ``len(...)`` tokens of every formatted prompt.
    Found by rendering a sentinel instruction and tokenizing the text after it; when that
    suffix tokenizes differently inside the full prompt, the in-prompt tokens covering it are
    returned (character offsets). If the template's first suffix characters are not a special
    token, an instruction ending in punctuation may still merge with them in real prompts.
    Cached per tokenizer object and chat template.
    """

    def compute() -> list[int]:
        text = format_prompt(tokenizer, _SENTINEL_USER)
        cut = text.rfind(_SENTINEL_USER)
        if cut < 0:
            raise SteerscopeError(
                f"chat template of '{_name(tokenizer)}' does not render the user message",
                "check the tokenizer's chat_template",
            )
        boundary = cut + len(_SENTINEL_USER)
        suffix_ids = _ids(tokenizer, text[boundary:])
        full_ids = _ids(tokenizer, text)
        n = len(suffix_ids)
        if n and full_ids[-n:] == suffix_ids:
            return suffix_ids
        # The suffix tokenizes differently in context: take the prompt's tokens that cover any
        # template text after the sentinel, using character offsets (fast tokenizers).
        try:
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
        except (NotImplementedError, TypeError, ValueError, KeyError):
            return suffix_ids
        ids = list(enc["input_ids"])
        for k, (_start, end) in enumerate(offsets):
            if end > boundary:
                return ids[k:]
        return suffix_ids

    return list(_cached(tokenizer, "post_instruction", compute))


def encode_prompts(tokenizer, texts: list[str], *, device=None) -> dict[str, torch.Tensor]:
    """Left-padded batch encoding of already formatted prompts.

    Tokenizes with ``add_special_tokens=False`` (templates contain their BOS) and pads on the
    left whatever ``tokenizer.padding_side`` says. The pad id is the tokenizer's pad token,
    else its EOS, else 0; the tokenizer object is not modified (padding positions are masked).
    Returns ``input_ids`` [B, T] long and ``attention_mask`` [B, T] long (1 = real token).
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise SteerscopeError("no prompts to encode", "pass at least one prompt")
    for t in texts:
        if not isinstance(t, str):
            raise SteerscopeError(
                f"prompts must be strings, got {type(t).__name__}",
                "format prompts with format_prompt first",
            )
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    for i, r in enumerate(rows):
        if len(r) == 0:
            raise SteerscopeError(
                f"prompt {i} is empty after tokenization", "pass non-empty prompts"
            )
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    if isinstance(pad_id, (list, tuple)):
        pad_id = pad_id[0]
    if pad_id is None:
        pad_id = 0
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, T]
    for i, r in enumerate(rows):
        input_ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, width - len(r) :] = 1
    if device is not None:
        input_ids = input_ids.to(device)
        attention_mask = attention_mask.to(device)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


__all__ = [
    "LLAMA3_NO_SYSTEM_HEADER_TEMPLATE",
    "assistant_turn",
    "NAMED_CHAT_TEMPLATES",
    "PINNED_DATE_STRING",
    "check_chat_template",
    "check_template_renders",
    "check_formatted_prompts",
    "encode_prompts",
    "format_prompt",
    "post_instruction_tokens",
    "resolve_chat_template",
    "set_chat_template",
    "template_supports_system",
    "with_own_chat_template",
]
