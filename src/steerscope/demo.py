"""The demo: refusal steering on the embedded demo refusal model, offline.

1. the demo refusal model (SmolLM2-135M-Instruct after a short safety fine-tune; built and
   cached on first use, see :mod:`steerscope.models.demo_model`);
2. DIM with the paper's selection rule, on training/validation prompts: the standard splits
   when a data folder is given (``data_dir`` or ``$STEERSCOPE_DATA_DIR``), else the project's
   built-in demo prompts;
3. optionally NTP and PO vectors (``methods``), trained on self-generated responses;
4. steered evaluation on held-out test prompts (harmful: α = −1, harmless: α = +1), with the
   unsteered model as reference, and a few example completions.

Every artifact is written into ``out``: the vectors (safetensors), the DIM candidate table
and the steering table with all completions (JSON).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from steerscope.data import PromptSet, load_prompts
from steerscope.errors import SteerscopeError
from steerscope.evaluate.steering import SteeringEval, evaluate_steering
from steerscope.models.chat import format_prompt
from steerscope.vectors import SteeringVector, select_dim

METHODS = ("dim", "ntp", "po")


@dataclass
class DemoPrompts:
    harmful_train: list[str]
    harmless_train: list[str]
    harmful_val: list[str]
    harmless_val: list[str]
    harmful_test: list[str]
    harmless_test: list[str]
    source: str


@dataclass
class DemoResult:
    model_id: str
    prompts_source: str
    vectors: dict[str, SteeringVector]
    dim_choice: dict
    steering: SteeringEval
    out: Path
    files: list[Path] = field(default_factory=list)


def demo_prompt_sets(*, data_dir: str | os.PathLike | None = None, n_train: int = 64,
                     n_val: int = 16, n_test: int = 24, seed: int = 42) -> DemoPrompts:
    """Seeded train/val/test instruction lists for the demo (see the module docstring)."""
    data_dir = data_dir or os.environ.get("STEERSCOPE_DATA_DIR")
    if data_dir:
        def get(name, n):
            return load_prompts(name, data_dir=data_dir).sample(n, seed=seed, allow_fewer=True)

        return DemoPrompts(
            get("harmful_train", n_train).instructions, get("harmless_train", n_train).instructions,
            get("harmful_val", n_val).instructions, get("harmless_val", n_val).instructions,
            get("jailbreakbench", n_test).instructions, get("harmless_test", n_test).instructions,
            source=f"standard splits in {data_dir}")
    from steerscope.data.demo_prompts import split_demo_prompts

    split = split_demo_prompts()

    def parts(ps: PromptSet, n_a: int, n_b: int) -> tuple[list[str], list[str]]:
        shuffled = ps.sample(len(ps), seed=seed).instructions
        if len(shuffled) < n_a + n_b:
            raise SteerscopeError(f"only {len(shuffled)} built-in prompts for {n_a}+{n_b}",
                                  "ask for fewer prompts")
        return shuffled[:n_a], shuffled[n_a : n_a + n_b]

    h_tr, h_va = parts(split.train_harmful, n_train, n_val)
    b_tr, b_va = parts(split.train_harmless, n_train, n_val)
    h_te = split.held_out_harmful.sample(n_test, seed=seed, allow_fewer=True).instructions
    b_te = split.held_out_harmless.sample(n_test, seed=seed, allow_fewer=True).instructions
    return DemoPrompts(h_tr, b_tr, h_va, b_va, h_te, b_te,
                       source="built-in demo prompts (test = held-out prompts)")


def run_demo(loaded=None, *, out: str | os.PathLike = "runs/demo", methods=("dim",),
             data_dir=None, n_train: int = 64, n_val: int = 16, n_test: int = 24,
             max_new_tokens: int = 48, batch_size: int = 16, seed: int = 42,
             train_epochs: int = 2, relax_kl: bool = True) -> DemoResult:
    """Run the demo on ``loaded`` (default: the demo refusal model) and write its artifacts.

    ``relax_kl``: see :func:`steerscope.vectors.select_dim` (on by default here: the demo's
    small validation sets make the paper's KL < 0.1 filter noisy on a 135M model)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or "dim" not in methods:
        raise SteerscopeError(f"demo methods must include 'dim' and be among {METHODS}, got "
                              f"{list(methods)}", "use e.g. --methods dim,ntp,po")
    prompts = demo_prompt_sets(data_dir=data_dir, n_train=n_train, n_val=n_val, n_test=n_test,
                               seed=seed)
    if loaded is None:
        from steerscope.models.loading import load_model

        loaded = load_model("demo")
    model, tok, arch = loaded.model, loaded.tokenizer, loaded.arch
    out = Path(out)

    def fmt(xs):
        return [format_prompt(tok, x) for x in xs]

    dim = select_dim(model, tok, fmt(prompts.harmful_train), fmt(prompts.harmless_train),
                     fmt(prompts.harmful_val), fmt(prompts.harmless_val),
                     model_id=loaded.model_id, revision=loaded.revision, arch=arch,
                     batch_size=batch_size, progress=True, score_all=False,
                     relax_kl=relax_kl)
    files = [dim.vector.save(out / "dim.safetensors"), dim.save_candidates(out / "dim_candidates.json")]
    vectors = {"dim": dim.vector}
    trained = [m for m in methods if m != "dim"]
    if trained:
        from steerscope.vectors.trained import TrainConfig, train_grid
        from steerscope.vectors.training_data import build_preference_data

        data = build_preference_data(model, tok, prompts.harmful_train, prompts.harmless_train,
                                     dim.vector, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size)
        train, val = data.split(0.2, seed=seed)
        for m in trained:
            cfg = TrainConfig(objective=m, epochs=train_epochs, seed=seed)
            res = train_grid(model, tok, train, layer=dim.vector.layer, configs=[cfg],
                             val_data=val, rescale_to=dim.vector.norm, model_id=loaded.model_id)
            vectors[m] = res.vector
            files.append(res.vector.save(out / f"{m}.safetensors"))
    steering = evaluate_steering(model, tok, vectors, prompts.harmful_test, prompts.harmless_test,
                                 arch=arch, max_new_tokens=max_new_tokens, batch_size=batch_size)
    files.append(steering.save(out / "steering.json"))
    return DemoResult(loaded.model_id, prompts.source, vectors, dim.chosen, steering, out, files)
