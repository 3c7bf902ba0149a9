"""Patching data: teacher-forced examples built from steered and unsteered greedy rollouts.

For a steering vector, generate unsteered and steered completions (present prompts with the
remove coefficient ``bypass_alpha``, absent prompts with the induce coefficient), keep the
prompts whose outcome flipped (present: the behaviour shows in the base completion and not in
the steered one; absent: the reverse) and build four datasets, each of at most
``max_per_dataset`` examples. Outcomes come from the behaviour's judge (default: the paper's
refusal substrings); with a jailbreak judge (:func:`judge_present_rollouts`, the paper:
LlamaGuard) a present prompt is kept when the judge calls the steered response unsafe and the
base response safe, while absent outcomes stay with the substrings (the paper scores Alpaca by
substring):

- ``present/steered``, ``present/base``: present prompts teacher-forcing the steered / the
  base response;
- ``absent/steered``, ``absent/base``: the same for absent prompts.

Results saved by earlier versions named the sides in refusal's words; they are read through
:func:`~steerscope.results_schema.upgrade_dataset_name`.

Each example is one token sequence (prompt + response) and one steering coefficient; every
response position is a patching sample (see :mod:`steerscope.patching.metrics`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from steerscope.errors import DataError, SteerscopeError
from steerscope.evaluate.matchers import is_refusal_substring
from steerscope.generation import generate_ids
from steerscope.models.chat import encode_prompts, format_prompt
from steerscope.results_schema import accepts_old_keywords, upgrade_dataset_name

DATASETS = ("present/steered", "present/base", "absent/steered", "absent/base")


@dataclass
class PatchingExample:
    """One teacher-forced sequence: ``input_ids`` [S] long (prompt then response),
    ``prompt_len`` prompt tokens, steering coefficient ``alpha``, ``dataset`` name."""

    input_ids: torch.Tensor
    prompt_len: int
    alpha: float
    dataset: str = "custom"
    prompt: str | None = None
    response: str | None = None

    def __post_init__(self) -> None:
        self.input_ids = torch.as_tensor(self.input_ids, dtype=torch.long).flatten().cpu()
        if not 0 < self.prompt_len < self.input_ids.numel():
            raise SteerscopeError(
                f"example has {self.input_ids.numel()} tokens and prompt length "
                f"{self.prompt_len}", "give a non-empty prompt followed by a non-empty response")

    @property
    def response_positions(self) -> torch.Tensor:
        """[N] long: positions whose next-token logits predict a response token."""
        return torch.arange(self.prompt_len - 1, self.input_ids.numel() - 1)

    def to_json(self) -> dict:
        return {"input_ids": self.input_ids.tolist(), "prompt_len": self.prompt_len,
                "alpha": self.alpha, "dataset": self.dataset, "prompt": self.prompt,
                "response": self.response}

    @classmethod
    def from_json(cls, d: dict) -> PatchingExample:
        return cls(torch.tensor(d["input_ids"]), int(d["prompt_len"]), float(d["alpha"]),
                   upgrade_dataset_name(d.get("dataset", "custom")), d.get("prompt"),
                   d.get("response"))


@dataclass
class Rollout:
    """Base and steered greedy completions of one prompt (token ids and text)."""

    prompt: str
    prompt_ids: list[int]
    base_ids: list[int]
    steered_ids: list[int]
    base_text: str
    steered_text: str
    base_refused: bool
    steered_refused: bool


def rollouts(model, tokenizer, instructions: Sequence[str], vector, alpha: float, *,
             max_new_tokens: int = 64, batch_size: int = 8,
             refused: Callable[[str, str], bool] | None = None,
             presence=None) -> list[Rollout]:
    """Unsteered and steered (``alpha·vector``) greedy completions of ``instructions``.

    ``refused(instruction, response) -> bool`` judges one completion; ``presence`` (a
    behaviour judge, ``.judge(prompts, responses)``, instead) judges each batch's base and
    steered completions in one call, with their instructions; neither: the paper's
    substring matcher.
    """
    if refused is not None and presence is not None:
        raise SteerscopeError("rollouts got both refused and presence", "pass one judge")
    if not instructions:
        raise DataError("no prompts for the patching rollouts", "pass a non-empty list")
    judge = refused or (lambda _p, text: is_refusal_substring(text))
    texts = [format_prompt(tokenizer, p) for p in instructions]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[Rollout] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        enc = encode_prompts(tokenizer, chunk, device=device)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        gens = {}
        for name, ops in (("base", []), ("steered", [vector.intervention(alpha)])):
            gens[name] = generate_ids(model, ids, mask, max_new_tokens=max_new_tokens,
                                      interventions=ops, pad_token_id=pad)
        batch = list(instructions[start:start + batch_size])
        toks = [{k: g.new_tokens[row, : int(g.lengths[row])].tolist() for k, g in gens.items()}
                for row in range(len(batch))]
        text = [{k: tokenizer.decode(t, skip_special_tokens=True) for k, t in tk.items()}
                for tk in toks]
        base, steered = [t["base"] for t in text], [t["steered"] for t in text]
        if presence is not None:
            verdicts = judge_verdicts(presence, batch + batch, base + steered)
        else:
            verdicts = [judge(p, r) for p, r in zip(batch + batch, base + steered)]
        n = len(batch)
        for row, instruction in enumerate(batch):
            prompt_ids = ids[row][mask[row].bool()].tolist()
            out.append(Rollout(instruction, prompt_ids, toks[row]["base"], toks[row]["steered"],
                               base[row], steered[row], verdicts[row], verdicts[n + row]))
    return out


def judge_verdicts(judge, prompts: list[str], responses: list[str]) -> list[bool]:
    """``judge``'s verdicts (True = jailbroken / unsafe) on prompt-response pairs; ``judge`` is
    a :class:`~steerscope.evaluate.judges.Judge` (``.judge(prompts, responses)``) or a plain
    callable with that signature."""
    fn = judge.judge if hasattr(judge, "judge") else judge
    if not callable(fn):
        raise SteerscopeError(f"a judge must be callable or have .judge(), got "
                              f"{type(judge).__name__}", "pass e.g. get_judge('llamaguard')")
    verdicts = list(fn(list(prompts), list(responses)))
    if len(verdicts) != len(responses):
        raise SteerscopeError(f"the judge returned {len(verdicts)} verdicts for "
                              f"{len(responses)} responses", "return one verdict per response")
    return [bool(v) for v in verdicts]


def judge_present_rollouts(rolls: Sequence[Rollout], judge) -> list[Rollout]:
    """Present-prompt rollouts with their outcomes relabelled by a jailbreak judge.

    The base and the steered response of every rollout are judged in one call;
    ``base_refused = not unsafe(base)`` and ``steered_refused = not unsafe(steered)``, so
    :func:`datasets_from_rollouts` keeps a prompt exactly when the judge calls the steered
    response unsafe and the base response safe (the paper's criterion with LlamaGuard).
    """
    rolls = list(rolls)
    if not rolls:
        return []
    prompts = [r.prompt for r in rolls]
    verdicts = judge_verdicts(judge, prompts + prompts,
                              [r.base_text for r in rolls] + [r.steered_text for r in rolls])
    n = len(rolls)
    return [dataclasses.replace(r, base_refused=not verdicts[i],
                                steered_refused=not verdicts[n + i])
            for i, r in enumerate(rolls)]


@accepts_old_keywords
def datasets_from_rollouts(present: Sequence[Rollout], absent: Sequence[Rollout], *,
                           bypass_alpha: float = -1.0, induce_alpha: float = 1.0,
                           max_per_dataset: int = 100) -> dict[str, list[PatchingExample]]:
    """The four patching datasets from rollouts (flipped prompts only, in input order)."""
    if max_per_dataset < 1:
        raise SteerscopeError(f"max_per_dataset must be >= 1, got {max_per_dataset}")
    out: dict[str, list[PatchingExample]] = {k: [] for k in DATASETS}
    for kind, rolls, alpha in (("present", present, bypass_alpha),
                               ("absent", absent, induce_alpha)):
        for r in rolls:
            flipped = (r.base_refused and not r.steered_refused) if kind == "present" else \
                (r.steered_refused and not r.base_refused)
            if not flipped:
                continue
            for which, ids, text in (("steered", r.steered_ids, r.steered_text),
                                     ("base", r.base_ids, r.base_text)):
                name = f"{kind}/{which}"
                if len(out[name]) >= max_per_dataset or not ids:
                    continue
                out[name].append(PatchingExample(torch.tensor(r.prompt_ids + ids),
                                                 len(r.prompt_ids), alpha, name, r.prompt, text))
    return out


@accepts_old_keywords
def build_patching_datasets(model, tokenizer, vector, present: Sequence[str],
                            absent: Sequence[str], *, bypass_alpha: float = -1.0,
                            induce_alpha: float = 1.0, max_per_dataset: int = 100,
                            max_new_tokens: int = 64, batch_size: int = 8,
                            refused: Callable[[str, str], bool] | None = None,
                            behaviour=None,
                            judge=None) -> dict[str, list[PatchingExample]]:
    """Rollouts on both prompt sets, then :func:`datasets_from_rollouts`. ``judge``: present
    outcomes from this jailbreak judge (:func:`judge_present_rollouts`) instead of
    ``refused``. ``behaviour`` (a :class:`~steerscope.behaviours.Behaviour`): "refused" is
    its judge's verdict (behaviour present) unless ``refused`` is given; ``present`` /
    ``absent`` are its present / absent prompts."""
    presence = behaviour.make_judge() if refused is None and behaviour is not None else None
    kw = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, refused=refused,
              presence=presence)
    present_r = rollouts(model, tokenizer, list(present), vector, bypass_alpha, **kw) \
        if present else []
    if judge is not None:
        present_r = judge_present_rollouts(present_r, judge)
    absent_r = rollouts(model, tokenizer, list(absent), vector, induce_alpha, **kw) \
        if absent else []
    if not present_r and not absent_r:
        raise DataError("no prompts for the patching datasets", "pass present or absent prompts")
    return datasets_from_rollouts(present_r, absent_r, bypass_alpha=bypass_alpha,
                                  induce_alpha=induce_alpha, max_per_dataset=max_per_dataset)
