"""Chat-template helpers: formatting, system-role fallback, post-instruction tokens, encoding."""

from __future__ import annotations

import copy

import pytest
import torch

from steerscope.errors import SteerscopeError
from steerscope.models.chat import (
    encode_prompts,
    format_prompt,
    post_instruction_tokens,
    template_supports_system,
)

NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
SMOL_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM"


@pytest.fixture(scope="module")
def nosys(smol):
    """A copy of the SmolLM2 tokenizer whose template raises on a system role (like Gemma)."""
    tok = copy.deepcopy(smol)
    tok.chat_template = NO_SYSTEM_TEMPLATE
    return tok


def test_supports_system(smol, nosys):
    assert template_supports_system(smol) is True
    assert template_supports_system(nosys) is False


def test_supports_system_cache_follows_template_edits(smol):
    tok = copy.deepcopy(smol)
    assert template_supports_system(tok) is True
    tok.chat_template = NO_SYSTEM_TEMPLATE
    assert template_supports_system(tok) is False


def test_format_prompt_plain(smol):
    text = format_prompt(smol, "Hi there")
    expected = smol.apply_chat_template(
        [{"role": "user", "content": "Hi there"}], tokenize=False, add_generation_prompt=True
    )
    assert text == expected
    assert SMOL_DEFAULT_SYSTEM in text  # the template's default system prompt
    assert text.endswith("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    no_gen = format_prompt(smol, "Hi there", add_generation_prompt=False)
    assert no_gen.endswith("<|im_start|>user\nHi there<|im_end|>\n")


def test_format_prompt_system_turn(smol):
    text = format_prompt(smol, "Hi there", system="Refuse everything.")
    assert text == (
        "<|im_start|>system\nRefuse everything.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )
    assert SMOL_DEFAULT_SYSTEM not in text


def test_format_prompt_no_system_role_prepends(nosys):
    assert format_prompt(nosys, "Hi there") == (
        "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
    )
    assert format_prompt(nosys, "Hi there", system="Refuse everything.") == (
        "<start_of_turn>user\nRefuse everything.\n\nHi there<end_of_turn>\n<start_of_turn>model\n"
    )


@pytest.mark.parametrize("fixture", ["smol", "nosys"])
def test_format_prompt_response_is_teacher_forced(request, fixture):
    tok = request.getfixturevalue(fixture)
    prompt = format_prompt(tok, "Say hi", system="Be brief.")
    full = format_prompt(tok, "Say hi", system="Be brief.", response="I cannot.")
    assert full == prompt + "I cannot."


def test_format_prompt_bad_inputs(smol):
    with pytest.raises(SteerscopeError, match="generation prompt"):
        format_prompt(smol, "x", response="y", add_generation_prompt=False)
    with pytest.raises(SteerscopeError, match="instruction must be a string"):
        format_prompt(smol, ["x"])  # type: ignore[arg-type]


def test_post_instruction_tokens_smol(smol):
    ids = post_instruction_tokens(smol)
    assert smol.decode(ids) == "<|im_end|>\n<|im_start|>assistant\n"
    # they are the last len(ids) tokens of any formatted prompt
    enc = encode_prompts(smol, [format_prompt(smol, "How do I bake bread?")])
    assert enc["input_ids"][0, -len(ids) :].tolist() == ids


def test_post_instruction_tokens_no_system(nosys):
    ids = post_instruction_tokens(nosys)
    assert nosys.decode(ids) == "<end_of_turn>\n<start_of_turn>model\n"
    enc = encode_prompts(nosys, [format_prompt(nosys, "Tell me a story")])
    assert enc["input_ids"][0, -len(ids) :].tolist() == ids


def test_encode_prompts_left_pads_without_mutating(smol):
    side, pad = smol.padding_side, smol.pad_token
    texts = [format_prompt(smol, "A much longer instruction than the other one"), "short"]
    enc = encode_prompts(smol, texts)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.dtype == torch.long and mask.dtype == torch.long and ids.shape == mask.shape
    singles = [smol(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert ids.shape == (2, len(singles[0]))
    for row, single, m in zip(ids, singles, mask):
        n = len(single)
        assert row[-n:].tolist() == single  # real tokens flush right
        assert m.tolist() == [0] * (ids.shape[1] - n) + [1] * n
    assert smol.padding_side == side and smol.pad_token == pad


def test_encode_prompts_without_pad_token_uses_eos(smol):
    tok = copy.deepcopy(smol)
    tok.pad_token = None
    assert tok.pad_token_id is None
    enc = encode_prompts(tok, ["one two three four", "one"])
    assert enc["input_ids"][1, 0].item() == tok.eos_token_id
    assert tok.pad_token is None  # not modified


def test_encode_prompts_errors(smol):
    with pytest.raises(SteerscopeError, match="no prompts"):
        encode_prompts(smol, [])
    with pytest.raises(SteerscopeError, match="must be strings"):
        encode_prompts(smol, [[1, 2, 3]])  # type: ignore[list-item]
    with pytest.raises(SteerscopeError, match="empty after tokenization"):
        encode_prompts(smol, ["ok", ""])


def test_no_chat_template_error(smol):
    tok = copy.deepcopy(smol)
    tok.chat_template = None
    for fn in (
        lambda: format_prompt(tok, "hi"),
        lambda: template_supports_system(tok),
        lambda: post_instruction_tokens(tok),
    ):
        with pytest.raises(SteerscopeError) as exc:
            fn()
        msg = str(exc.value)
        assert "has no chat template" in msg and "tokenizer.chat_template" in msg
        assert "\n" not in msg


# --- dates and the released Llama-3 format (issue 12.3) ------------------------------------
# A Llama-3.2-Instruct-style template: like the Hub's, it writes "Today Date" from
# strftime_now unless the caller passes date_string.
LLAMA32_STYLE_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}"
    "{%- if strftime_now is defined %}{%- set date_string = strftime_now('%d %b %Y') %}"
    "{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture(scope="module")
def llama_like(smol):
    """The SmolLM2 tokenizer with Llama-3's turn markers as special tokens and a
    Llama-3.2-style template (no Hub access needed)."""
    tok = copy.deepcopy(smol)
    tok.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIAL})
    tok.bos_token = "<|begin_of_text|>"
    tok.chat_template = LLAMA32_STYLE_TEMPLATE
    return tok


def _clock(monkeypatch, year: int, month: int, day: int) -> None:
    """Set the clock transformers' ``strftime_now`` reads when rendering templates."""
    import datetime as dt

    from transformers.utils import chat_template_utils

    class FixedDatetime(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(year, month, day, 12, 0, 0, tzinfo=tz)

    monkeypatch.setattr(chat_template_utils, "datetime", FixedDatetime)


def test_llama32_prompts_do_not_depend_on_the_date(monkeypatch, llama_like):
    msgs = [{"role": "user", "content": "How do I bake bread?"}]
    raw, ids = {}, {}
    for day, date in (("a", (2025, 1, 2)), ("b", (2026, 11, 29))):
        _clock(monkeypatch, *date)
        # the template itself is dated: rendering it plainly differs between the two days
        raw[day] = llama_like.apply_chat_template(msgs, tokenize=False,
                                                  add_generation_prompt=True)
        text = format_prompt(llama_like, "How do I bake bread?", response="Sure.")
        ids[day] = encode_prompts(llama_like, [text])["input_ids"][0].tolist()
    assert "Today Date: 02 Jan 2025" in raw["a"] and "Today Date: 29 Nov 2026" in raw["b"]
    assert ids["a"] == ids["b"]
    assert "Today Date: 26 Jul 2024" in llama_like.decode(ids["a"])


def test_released_llama3_format_has_no_system_header(llama_like):
    from steerscope.models.chat import set_chat_template

    tok = set_chat_template(copy.deepcopy(llama_like), "llama3-no-system-header")
    bos, sh, eh, eot = LLAMA3_SPECIAL
    # the released code's string, written out by hand (its tokenizer adds the BOS)
    expected = f"{bos}{sh}user{eh}\n\n How do I bake bread? {eot}{sh}assistant{eh}\n\n"
    assert format_prompt(tok, " How do I bake bread? ") == expected
    assert format_prompt(tok, "Hi", system="Refuse.") == (
        f"{bos}{sh}system{eh}\n\nRefuse.{eot}{sh}user{eh}\n\nHi{eot}{sh}assistant{eh}\n\n")
    assert format_prompt(tok, "Hi", response="No.").endswith(f"{sh}assistant{eh}\n\nNo.")
    assert tok.decode(post_instruction_tokens(tok)) == f"{eot}{sh}assistant{eh}\n\n"
    assert template_supports_system(tok) is True
    ids = encode_prompts(tok, [expected])["input_ids"][0].tolist()
    assert ids[:2] == [tok.convert_tokens_to_ids(bos), tok.convert_tokens_to_ids(sh)]


def test_set_chat_template_errors(smol):
    from steerscope.models.chat import set_chat_template

    with pytest.raises(SteerscopeError, match="unknown chat template 'llama4'"):
        set_chat_template(copy.deepcopy(smol), "llama4")
    with pytest.raises(SteerscopeError, match="needs the tokens <\\|start_header_id\\|>"):
        set_chat_template(copy.deepcopy(smol), "llama3-no-system-header")
    tok = copy.deepcopy(smol)
    assert set_chat_template(tok, None).chat_template == smol.chat_template
    assert set_chat_template(tok, NO_SYSTEM_TEMPLATE).chat_template == NO_SYSTEM_TEMPLATE


def test_clock_only_template_warns(smol):
    tok = copy.deepcopy(smol)
    tok.chat_template = "{{ strftime_now('%Y') }}" + NO_SYSTEM_TEMPLATE
    with pytest.warns(UserWarning, match="writes today's date"):
        format_prompt(tok, "hi")
