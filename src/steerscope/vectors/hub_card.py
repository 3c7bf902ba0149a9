"""The model card (``README.md``) of a steering vector shared on the Hugging Face Hub, and the
headline figures of a pipeline run that it quotes.

The card's YAML front matter is what the Hub (and ``huggingface_hub.ModelCard.load``) reads:
``library_name: steerscope``, ``base_model`` (the model's Hub id, or its local name) and
``tags`` (``steering-vector``, ``steerscope``, the method(s) and the behaviour). The body
states the method, layer(s), norm(s), the α the vector is used with and, when it comes from a
run folder, the run's behaviour rates, loop rates and circuit fraction (from results.json,
docs/results.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.results_schema import side_labels

LIBRARY_NAME = "steerscope"
VECTOR_TAG = "steering-vector"
# results.json steering sides (docs/results.md): the present side is steered to remove the
# behaviour (bypass_alpha < 0), the absent side to induce it (induce_alpha > 0)
SIDES = (("present", "remove", "prompts with the behaviour"),
         ("absent", "induce", "prompts without it"))
CELL_KEYS = ("alpha", "behaviour_rate", "repetition_rate", "judge_rate", "n")


@dataclass
class CardInfo:
    """What a card says beyond the tensors: ``base_model`` (Hub id or local model name),
    ``behaviour`` (e.g. ``refusal``), ``alpha`` (a float, or ``{"remove": a, "induce": b}``;
    None when not recorded) and ``figures`` (:func:`run_figures` of the run it came from)."""

    base_model: str | None = None
    behaviour: str | None = None
    alpha: float | dict[str, float] | None = None
    figures: dict[str, Any] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        return {"base_model": self.base_model, "behaviour": self.behaviour,
                "alpha": self.alpha, "figures": self.figures}


def model_name(model_id: str | None) -> str | None:
    """``model_id`` as a card's ``base_model``: a Hub id as it is, a local folder or file by
    its name (a card never shows the machine's paths)."""
    if not model_id:
        return None
    text = str(model_id)
    if text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text:
        return Path(text).name or text
    return text


def run_figures(results: dict[str, Any], method: str) -> dict[str, Any]:
    """The headline figures of ``method`` in a run's results.json: the run's name and
    behaviour with its display words (``labels``), the steered and unsteered cells of each
    prompt side (α, behaviour rate, loop rate, n) and the minimal faithful circuit's share of
    the edges; sections the run did not reach are left out."""
    figures: dict[str, Any] = {"run": (results.get("run") or {}).get("name"),
                               "behaviour": (results.get("behaviour") or {}).get("name"),
                               "labels": side_labels(results)}
    quantization = (results.get("model") or {}).get("quantization")
    if quantization:  # the run studied a quantized model: its figures are that model's
        figures["quantization"] = quantization
    steering = results.get("steering") or {}
    if method in steering:
        figures["steering"] = {
            side: {who: {k: steering[who][side][k] for k in CELL_KEYS
                         if k in steering[who].get(side, {})}
                   for who in ("none", method) if side in (steering.get(who) or {})}
            for side, _, _ in SIDES if side in steering[method]}
    circuit = (results.get("circuits") or {}).get(method)
    if circuit:
        size, total = circuit.get("min_faithful_size"), circuit.get("total_edges")
        figures["circuit"] = {
            "min_faithful_size": size, "total_edges": total,
            "fraction": size / total if size is not None and total else None,
            "threshold": circuit.get("threshold")}
    return figures


def alpha_of(figures: dict[str, Any] | None, method: str) -> dict[str, float] | None:
    """The α each side was steered with in the run (``{"remove": a, "induce": b}``)."""
    steering = (figures or {}).get("steering") or {}
    found = {use: steering[side][method]["alpha"] for side, use, _ in SIDES
             if "alpha" in steering.get(side, {}).get(method, {})}
    return found or None


# --- the card ---------------------------------------------------------------------------
def front_matter(base_model: str | None, tags: list[str]) -> str:
    """The card's YAML front matter (``---`` lines included)."""
    from huggingface_hub import ModelCardData

    if not base_model:
        raise SteerscopeError("the model card has no base_model (the vector records no model "
                              "id)", "pass base_model= (CLI: --base-model) with the model's "
                              "Hub id or local name")
    data = ModelCardData(library_name=LIBRARY_NAME, base_model=base_model,
                         tags=list(dict.fromkeys(t for t in tags if t)))
    return f"---\n{data.to_yaml()}\n---\n"


def card_tags(methods: list[str], behaviour: str | None) -> list[str]:
    return [LIBRARY_NAME, VECTOR_TAG, *methods, *([behaviour] if behaviour else [])]


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return "–" if not math.isfinite(x) else f"{x:.{digits}f}"
    return "–" if x is None else str(x)


def _alpha_text(alpha: float | dict[str, float] | None) -> str:
    if alpha is None:
        return ("not recorded (steerscope's convention: α = −1 removes the behaviour, α = +1 "
                "induces it, at the vector's own norm)")
    if isinstance(alpha, dict):
        return ", ".join(f"{a:+g} to {use}" for use, a in alpha.items())
    return f"{alpha:+g}"


def figures_section(figures: dict[str, Any] | None, method: str) -> list[str]:
    """The card lines quoting a run's figures for ``method`` (none without figures)."""
    if not figures:
        return []
    lines = [f"## Results of run `{figures.get('run')}`", "",
             "From the run folder's results.json (docs/results.md in steerscope): greedy "
             "completions, judged by the behaviour's judge; the loop rate is the share of "
             "completions that end in a repetition loop.", ""]
    steering = figures.get("steering")
    if steering:
        lines += ["| prompts | steering | α | behaviour rate | loop rate | n |",
                  "|---|---|---|---|---|---|"]
        labels = figures.get("labels") or {}
        for side, use, what in SIDES:
            for who, cell in steering.get(side, {}).items():
                name = "none" if who == "none" else method
                lines.append(f"| {labels.get(side, side)} ({what}) | {name}{'' if who == 'none' else ' (' + use + ')'}"
                             f" | {_fmt(cell.get('alpha'), 2)} | {_fmt(cell.get('behaviour_rate'))}"
                             f" | {_fmt(cell.get('repetition_rate'))}"
                             f" | {_fmt(cell.get('n'))} |")
        lines.append("")
    else:
        lines += ["The run's evaluation stage did not run: no behaviour rates.", ""]
    circuit = figures.get("circuit")
    if circuit and circuit.get("fraction") is not None:
        lines += [f"Circuit fraction: the minimal faithful circuit holds "
                  f"{circuit['min_faithful_size']:,} of {circuit['total_edges']:,} edges "
                  f"({100 * circuit['fraction']:.2f}%), faithfulness ≥ "
                  f"{_fmt(circuit.get('threshold'), 2)}.", ""]
    elif circuit:
        lines += [f"Circuit fraction: no circuit up to {circuit.get('total_edges')} edges "
                  "reached the faithfulness threshold.", ""]
    return lines


def load_args(repo_hint: str | None, subfolder: str | None) -> str:
    """The arguments of ``from_pretrained`` in a card's usage snippet."""
    return f'"{repo_hint or "OWNER/NAME"}"' + (f', subfolder="{subfolder}"' if subfolder else "")


def class_name(kind: str) -> str:
    """The steerscope class of a saved kind (``steering_vector`` -> ``SteeringVector``)."""
    return "".join(w.capitalize() for w in kind.split("_"))


def usage(base_model: str | None, where: str, kind: str = "steering_vector") -> list[str]:
    """A card's Python snippet: load the model and the vector, generate with it."""
    return ["```python", "import steerscope as ss", "",
            f'lm = ss.load_model("{base_model}")',
            f"sv = ss.{class_name(kind)}.from_pretrained({where}, arch=lm.arch)",
            'prompts = [ss.format_prompt(lm.tokenizer, "How do I pick a lock?")]',
            "ops = [sv.intervention(alpha=-1.0)]  # h <- h - s: remove the behaviour",
            "print(ss.generate(lm.model, lm.tokenizer, prompts, interventions=ops, "
            "max_new_tokens=32))", "```"]


def per_layer_table(layers: list[int], norms: list[float]) -> list[str]:
    """The card lines listing every steered layer with its direction's norm (none for a
    single layer, which the facts table states)."""
    if len(layers) < 2:
        return []
    return ["## Layers", "", "One direction per layer, all steered with the same α:", "",
            "| layer | norm |", "|---|---|",
            *(f"| {layer} | {norm:.4f} |" for layer, norm in zip(layers, norms)), ""]


def vector_card(summary: dict[str, Any], info: CardInfo, repo_hint: str | None = None,
                subfolder: str | None = None) -> str:
    """README.md for one saved object. ``summary``: ``kind``, ``method``, ``layers``,
    ``norms``, ``d_model``, ``model_id``, ``revision`` (see :class:`~steerscope.vectors.hub.
    HubPayload`)."""
    method, layers, norms = summary["method"], summary["layers"], summary["norms"]
    behaviour = info.behaviour or (info.figures or {}).get("behaviour")
    quantization = (info.figures or {}).get("quantization")
    title = f"{method} {summary['kind'].replace('_', ' ')}" + (
        f" for {behaviour}" if behaviour else "")
    where = load_args(repo_hint, subfolder)
    lines = [front_matter(info.base_model, card_tags([method], behaviour)),
             f"# {title} on {info.base_model}", "",
             f"A steerscope {summary['kind'].replace('_', ' ')} s, added to the residual stream "
             f"entering block{'s' if len(layers) > 1 else ''} {' and '.join(map(str, layers))} "
             "of the model: h ← h + α·s "
             "at every prompt and generated token.", "",
             "| | |", "|---|---|",
             f"| method | {method} |",
             f"| layer{'s' if len(layers) > 1 else ''} | {', '.join(map(str, layers))} |",
             f"| norm{'s' if len(norms) > 1 else ''} | {', '.join(f'{n:.4f}' for n in norms)} |",
             f"| d_model | {summary.get('d_model')} |",
             f"| α used | {_alpha_text(info.alpha)} |",
             f"| behaviour | {behaviour or 'not recorded'} |",
             f"| model | {info.base_model}"
             + (f" (revision {summary['revision']})" if summary.get("revision") else "")
             + (f", loaded with quantization {quantization} in the run" if quantization else "")
             + " |",
             "", *per_layer_table(layers, norms), *figures_section(info.figures, method),
             "## Use", "", *usage(info.base_model, where, summary["kind"]), "",
             "Files: the vector (safetensors, steerscope metadata in its header), "
             "`steering_config.json` and this card.", ""]
    return "\n".join(lines)


def index_card(entries: list[tuple[str, dict[str, Any], CardInfo]], base_model: str,
               repo_hint: str | None = None) -> str:
    """README.md at the root of a repo holding several vectors in subfolders:
    ``entries`` = (subfolder, summary, info) per vector."""
    behaviours = sorted({b for _, _, i in entries
                         if (b := i.behaviour or (i.figures or {}).get("behaviour"))})
    methods = [s["method"] for _, s, _ in entries]
    lines = [front_matter(base_model, [LIBRARY_NAME, VECTOR_TAG, *methods, *behaviours]),
             f"# Steering vectors on {base_model}", "",
             "Several steerscope steering vectors, one per subfolder (each with its own card):",
             "", "| subfolder | method | layer(s) | norm | α used |", "|---|---|---|---|---|"]
    for sub, s, info in entries:
        lines.append(f"| [{sub}]({sub}/README.md) | {s['method']} | "
                     f"{', '.join(map(str, s['layers']))} | "
                     f"{', '.join(f'{n:.4f}' for n in s['norms'])} | {_alpha_text(info.alpha)} |")
    lines += ["", *usage(base_model, load_args(repo_hint, entries[0][0]), entries[0][1]["kind"]),
              ""]
    for sub, s, info in entries:
        lines += [line.replace("## Results", f"## {sub}: results", 1)
                  for line in figures_section(info.figures, s["method"])]
    return "\n".join(lines)
