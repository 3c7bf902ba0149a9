"""Steering value vectors (paper section 6): what the steered OV circuit writes.

At a layer ``l >= ℓ`` the steered residual is ``x = H + α·s`` (``H`` is everything else), the
pre-attention norm gives ``γ ⊙ x · r`` with ``r_k = rsqrt(mean(x_k²) + ε)`` per position, and
attention is linear in its values, so for every query position ``t``

    attn_out_t = Σ_h [ Σ_k A^h_tk r_k (H_k ⊙ γ) W_V^h W_O^h  +  α c^h_t svv^h ]  (+ biases)
    svv^h      = (s ⊙ γ) W_V^h W_O^h          [d]   (input-independent)
    c^h_t      = Σ_k A^h_tk r_k                     (a per-position scalar, "D_c")

with ``W_V^h`` the value slice of head ``h``'s KV group (GQA), ``W_O^h`` its output slice and
``γ`` the effective pre-attention norm weight ((1+γ) for Gemma). Biases: ``b_V^h W_O^h`` per
head (rows of ``A`` sum to one) and ``o_proj``'s bias. With a post-attention norm (Gemma 2/3)
the head's write into the residual is ``svv^h ⊙ γ′`` times another per-position scalar; that
is the vector we read with the logit lens (``iic`` in the paper).

Logit lens: vector → the model's final norm → unembedding (→ final soft-cap) → top-k tokens.
:func:`svv_report` ranks heads by their node score from the patching run (keys
``"a{layer}.h{head}"``; heads with a negative score are sign-flipped and marked), or by svv
norm without scores, and adds the SUM over heads and the raw vector.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from steerscope.artifacts import atomic_write, atomic_write_json
from steerscope.errors import SteerscopeError
from steerscope.models.archs import ModelArch, validate_model
from steerscope.models.quantization import linear_weight


def head_name(layer: int, head: int) -> str:
    """The node name of attention head ``head`` of block ``layer`` (``"a12.h3"``)."""
    return f"a{layer}.h{head}"


_HEAD_RE = re.compile(r"^a(\d+)\.h(\d+)$")


# ---------------------------------------------------------------------------------------
# svv and the attention decomposition
# ---------------------------------------------------------------------------------------
def _value_out_weights(arch: ModelArch, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head ``W_V^h`` [H, d_head, d] (the KV group's slice, GQA) and ``W_O^h`` [H, d, d_head]."""
    w_v = linear_weight(arch.component(layer, "v_proj")).detach().float()  # [G*dh, d]
    w_o = linear_weight(arch.component(layer, "o_proj")).detach().float()  # [d, H*dh]
    w_v = w_v.view(arch.n_kv_heads, arch.d_head, arch.d_model)  # [G, dh, d]
    w_v = w_v.repeat_interleave(arch.group_size, dim=0)  # [H, dh, d]
    w_o = w_o.view(arch.d_model, arch.n_heads, arch.d_head).permute(1, 0, 2)  # [H, d, dh]
    return w_v, w_o


def steering_value_vectors(arch: ModelArch, vector: torch.Tensor, layer: int, *,
                           post_norm: bool = False) -> torch.Tensor:
    """``svv^h = (s ⊙ γ) W_V^h W_O^h`` for every head of block ``layer``: [H, d] float32.

    ``post_norm=True`` multiplies by the effective post-attention norm weight ``γ′`` where the
    architecture has one (Gemma 2/3), giving the direction the head writes into the residual.
    """
    arch.check_layer(layer)
    s = arch.check_vector(vector).detach().float()
    gamma = arch.norm_weight(arch.component(layer, "attn_norm")).detach().float()  # [d]
    w_v, w_o = _value_out_weights(arch, layer)
    u = w_v @ (s.to(gamma.device) * gamma)  # [H, dh]
    svv = torch.einsum("hdk,hk->hd", w_o, u)  # [H, d]
    post = arch.component(layer, "attn_post_norm")
    if post_norm and post is not None:
        svv = svv * arch.norm_weight(post).detach().float()
    return svv


@dataclass
class AttentionDecomposition:
    """The terms of ``attn_out`` (o_proj output, before any post-norm) at one layer.

    ``input_term`` [B, T, d]: Σ_h A^h D_c (H ⊙ γ) W_V^h W_O^h; ``svv_term`` [B, T, d]:
    Σ_h α c^h svv^h; ``per_head_scale`` [B, T, H]: c^h; ``bias`` [d]: Σ_h b_V^h W_O^h + b_O.
    """

    input_term: torch.Tensor
    svv_term: torch.Tensor
    per_head_scale: torch.Tensor
    svv: torch.Tensor
    bias: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        """[B, T, d] the reconstructed attention output."""
        return self.input_term + self.svv_term + self.bias


def decompose_attention(arch: ModelArch, layer: int, resid: torch.Tensor, pattern: torch.Tensor,
                        vector: torch.Tensor, alpha: float) -> AttentionDecomposition:
    """Split the attention output of block ``layer`` into input and svv terms (module doc).

    ``resid`` [B, K, d]: the steered residual entering the block (pre-norm) at every key
    position; ``pattern`` [B, H, T, K]: the attention probabilities of the run (the last T
    of the K positions are the queries).
    """
    norm = arch.component(layer, "attn_norm")
    gamma = arch.norm_weight(norm).detach().float()  # [d]
    x = resid.float()
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + arch.norm_eps(norm))  # [B, K, 1]
    s = arch.check_vector(vector).detach().float().to(x.device)
    h_part = (x - float(alpha) * s) * r * gamma  # [B, K, d]
    w_v, w_o = _value_out_weights(arch, layer)
    v_h = torch.einsum("bkd,hed->bhke", h_part, w_v)  # [B, H, K, dh]
    z = pattern.float() @ v_h  # [B, H, T, dh]
    input_term = torch.einsum("bhte,hde->btd", z, w_o)  # [B, T, d]
    c = (pattern.float() @ r.unsqueeze(1)).squeeze(-1).transpose(1, 2)  # [B, T, H]
    svv = steering_value_vectors(arch, vector, layer)  # [H, d]
    svv_term = float(alpha) * torch.einsum("bth,hd->btd", c, svv)
    bias = torch.zeros(arch.d_model, device=x.device)
    b_v = arch.component(layer, "v_proj").bias
    if b_v is not None:
        b = b_v.detach().float().view(arch.n_kv_heads, arch.d_head)
        b = b.repeat_interleave(arch.group_size, dim=0)  # [H, dh]
        bias = bias + torch.einsum("hde,he->d", w_o, b)
    b_o = arch.component(layer, "o_proj").bias
    if b_o is not None:
        bias = bias + b_o.detach().float()
    return AttentionDecomposition(input_term, svv_term, c, svv, bias)


# ---------------------------------------------------------------------------------------
# logit lens
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def logit_lens(arch: ModelArch, vectors: torch.Tensor, top_k: int = 20
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Push residual-space ``vectors`` [N, d] through the final norm and the unembedding (and
    the final soft-cap, if any): returns (top-k logits [N, k], token ids [N, k])."""
    if vectors.ndim != 2 or vectors.shape[-1] != arch.d_model:
        raise SteerscopeError(f"logit lens needs [N, {arch.d_model}] vectors, got "
                              f"{tuple(vectors.shape)}")
    if top_k < 1:
        raise SteerscopeError(f"top_k must be >= 1, got {top_k}")
    head = arch.unembed
    w_u = linear_weight(head)  # [V, d], dequantized when the unembedding is quantized
    x = vectors.to(device=w_u.device, dtype=w_u.dtype).unsqueeze(0)  # [1, N, d]
    logits = F.linear(arch.final_norm(x), w_u, head.bias)[0].float()  # [N, V]
    cap = arch.final_logit_softcap
    if cap:
        logits = torch.tanh(logits / cap) * cap
    k = min(int(top_k), logits.shape[-1])
    vals, ids = logits.topk(k, dim=-1)
    return vals.cpu(), ids.cpu()


def _token_text(tokenizer, token_id: int) -> str:
    if tokenizer is None:
        return str(token_id)
    return tokenizer.decode([token_id])


# ---------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------
@dataclass
class SVVReport:
    """Per-head svv token lists for one vector.

    ``heads``: ranked, each ``{head, layer, index, score, norm, flipped, tokens}`` with
    ``tokens = [[token, logit], ...]``; ``total``: the SUM over all heads; ``raw``: the vector
    itself; ``ranking``: ``"node score"`` or ``"svv norm"``.
    """

    layer: int
    alpha_sign: int
    ranking: str
    heads: list[dict]
    total: dict
    raw: dict
    top_k: int
    vector_name: str = "vector"
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON (atomically)."""
        return atomic_write_json(path, self.to_json())

    def table(self, n_heads: int = 10, n_tokens: int = 10) -> str:
        """Plain text: one line per head (top ``n_heads``), SUM and raw, with their tokens."""
        def line(label, entry):
            toks = ", ".join(repr(t)[1:-1] for t, _ in entry["tokens"][:n_tokens])
            return f"{label:16s} {toks}"

        lines = [f"{self.vector_name}: svv logit lens (layer >= {self.layer}, heads ranked by "
                 f"{self.ranking}; (-) = sign-flipped)"]
        for h in self.heads[:n_heads]:
            label = h["head"] + (" (-)" if h["flipped"] else "")
            score = f"{h['score']:+.3g}" if h["score"] is not None else f"|{h['norm']:.3g}|"
            lines.append(line(f"{label} {score}", h))
        lines.append(line("SUM", self.total))
        lines.append(line("raw vector", self.raw))
        return "\n".join(lines)

    def figure(self, path: str | Path, n_heads: int = 10, n_tokens: int = 10) -> Path:
        """A PNG: rows = the top heads, SUM and the raw vector; cells = their top tokens,
        shaded by logit (scaled per row)."""
        import warnings

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        entries = [(h["head"] + (" (−)" if h["flipped"] else ""), h)
                   for h in self.heads[:n_heads]]
        entries += [("SUM", self.total), ("raw vector", self.raw)]
        k = min(n_tokens, self.top_k)
        shade = torch.zeros(len(entries), k)
        for i, (_, e) in enumerate(entries):
            vals = torch.tensor([v for _, v in e["tokens"][:k]])
            span = float(vals.max() - vals.min()) or 1.0
            shade[i, : len(vals)] = (vals - vals.min()) / span
        fig, ax = plt.subplots(figsize=(1.3 * k + 2, 0.42 * len(entries) + 1.0))
        ax.imshow(shade.numpy(), cmap="Oranges", aspect="auto", vmin=-0.2, vmax=1.3)
        for i, (_, e) in enumerate(entries):
            for j, (tok, _) in enumerate(e["tokens"][:k]):
                text = repr(tok)[1:-1][:14]
                # parse_math off: a token such as "$$" (code) is text, not mathtext
                ax.text(j, i, text, ha="center", va="center", fontsize=7, parse_math=False)
        ax.set_yticks(range(len(entries)), [lab for lab, _ in entries], fontsize=8)
        ax.set_xticks(range(k), [str(j + 1) for j in range(k)], fontsize=7)
        ax.set_title(f"{self.vector_name}: steering value vectors, logit lens (ranked by "
                     f"{self.ranking})", fontsize=9)
        path = Path(path)

        def write(tmp):
            fig.savefig(tmp, format="png", dpi=120)

        try:
            with warnings.catch_warnings():  # tokens in scripts the font lacks draw as boxes
                warnings.filterwarnings("ignore", message="Glyph .* missing from font")
                fig.tight_layout()
                return atomic_write(path, write)
        finally:
            plt.close(fig)


def _parse_scores(arch: ModelArch, layer: int, scores: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in scores.items():
        m = _HEAD_RE.match(str(key))
        if m is None:
            continue  # other node types (MLPs, the steering input) are not heads
        lv, h = int(m.group(1)), int(m.group(2))
        if not 0 <= lv < arch.n_layers or not 0 <= h < arch.n_heads:
            raise SteerscopeError(f"head score key '{key}' is outside this model "
                                  f"({arch.n_layers} layers, {arch.n_heads} heads)",
                                  "use node scores computed on this model")
        v = float(value)
        if v != v:
            raise SteerscopeError(f"head score for '{key}' is NaN", "recompute the node scores")
        if lv >= layer:
            out[key] = v
    if scores and not out:
        raise SteerscopeError(f"no head scores ('a{{layer}}.h{{head}}') for layers >= {layer}",
                              "pass the node scores of the patching run for this vector")
    return out


@torch.no_grad()
def svv_report(
    model,
    tokenizer,
    vector: torch.Tensor,
    layer: int,
    *,
    head_scores: Mapping[str, float] | None = None,
    top_k: int = 20,
    alpha_sign: int = 1,
    arch: ModelArch | None = None,
    vector_name: str = "vector",
) -> SVVReport:
    """The svv logit lens of every head in blocks ``layer .. L-1`` (see the module doc).

    ``head_scores``: node scores keyed ``"a{layer}.h{head}"`` (other keys are ignored);
    heads are ranked by |score|, negative ones flipped and marked; heads without a score come
    last (by svv norm). Without scores heads are ranked by svv norm. ``alpha_sign`` = −1 reads
    the vectors of ``−s`` (the bypass direction).
    """
    arch = arch if arch is not None else validate_model(model)
    arch.check_layer(layer)
    s = arch.check_vector(vector).detach().float()
    if alpha_sign not in (1, -1):
        raise SteerscopeError(f"alpha_sign must be +1 or -1, got {alpha_sign}")
    s = s * alpha_sign
    scores = _parse_scores(arch, layer, head_scores) if head_scores else {}
    layers = list(range(layer, arch.n_layers))
    svv = torch.stack([steering_value_vectors(arch, s, lv, post_norm=True) for lv in layers])
    flat = svv.reshape(-1, arch.d_model)  # [n_layers * H, d]
    names = [head_name(lv, h) for lv in layers for h in range(arch.n_heads)]
    norms = flat.norm(dim=-1)
    sc = [scores.get(n) for n in names]
    flipped = [v is not None and v < 0 for v in sc]
    signs = torch.tensor([-1.0 if f else 1.0 for f in flipped])
    lens_in = torch.cat([flat * signs[:, None], flat.sum(0, keepdim=True), s[None]])
    vals, ids = logit_lens(arch, lens_in, top_k)

    def tokens(i):
        return [[_token_text(tokenizer, int(t)), float(v)] for t, v in zip(ids[i], vals[i])]

    order = sorted(range(len(names)), key=lambda i: (
        sc[i] is None, -abs(sc[i]) if sc[i] is not None else -float(norms[i])))
    heads = [dict(head=names[i], layer=layers[i // arch.n_heads], index=i % arch.n_heads,
                  score=sc[i], norm=float(norms[i]), flipped=flipped[i], tokens=tokens(i))
             for i in order]
    n = len(names)
    total = dict(head="SUM", norm=float(flat.sum(0).norm()), tokens=tokens(n))
    raw = dict(head="raw", norm=float(s.norm()), tokens=tokens(n + 1))
    ranking = "node score" if scores else "svv norm"
    return SVVReport(layer, alpha_sign, ranking, heads, total, raw, int(vals.shape[1]),
                     vector_name, meta=dict(n_layers=arch.n_layers, n_heads=arch.n_heads,
                                            post_norm=arch.spec.attn_post_norm is not None))
