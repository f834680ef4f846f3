"""RASP → weights with Tracr (optional `tracr` extra), then → a plain dict of numpy arrays laid out
for `wrapperdist.models.tracr_model.TracrTransformer`. Only this module imports JAX."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wrapperdist.models.tracr_model import TracrShape, TracrTransformer
from wrapperdist.settings.tracr.programs import make_program
from wrapperdist.settings.tracr.tasks import BOS, PAD, TracrTarget, TracrVocab, tracr_vocab

_COMPILER_PAD = "compiler_pad"  # Tracr's own name for the padding token


@dataclass
class CompiledWeights:
    """Everything the torch model needs: shape numbers, vocabulary, fixed read-out, weights."""

    n_layer: int
    n_head: int
    key_size: int
    d_mlp: int
    d_model: int
    vocab: TracrVocab
    residual_labels: list[str]
    unembed: np.ndarray  # (d_model, n_answers): the projection onto the output subspace
    weights: dict[str, np.ndarray]  # torch parameter name -> array in torch layout
    compiled: object | None = None  # the JAX model, for equality tests; never saved


def compiler_tokens(target: TracrTarget, tokens: list[str]) -> dict[str, object]:
    """Our token names -> the values the RASP program sees: strings for counter, and for
    max_identifier integers that fall along the vocabulary's order (the paper's a > b > ...: the
    first token is the largest)."""
    if target.program == "counter":
        return {t: t for t in tokens}
    return {t: len(tokens) - i for i, t in enumerate(tokens)}


def exact_mlp_sharpness(max_len: int) -> int:
    """Tracr's `mlp_exactness` that keeps SelectorWidth exact up to `max_len`. Its MLP reads a width
    k off BOS's attention share 1/(k+1) with ramps 1/mlp_exactness wide; neighbouring shares differ by
    1/((k+1)(k+2)), so Tracr's default 100 miscounts every k >= 9 (measured: the compiled 45-token
    Counter answers 9 for 10 a's, in JAX as in torch). Twice the finest gap, never below the default."""
    return max(100, 2 * (max_len + 1) * (max_len + 2))


def compile_target(target: TracrTarget, tokens: list[str], max_len: int,
                   mlp_exactness: int | None = None) -> CompiledWeights:
    """Compile `target`'s program for sequences of up to `max_len` tokens (plus BOS); `mlp_exactness`
    default: `exact_mlp_sharpness(max_len)`."""
    from tracr.compiler import compiling

    to_compiler = compiler_tokens(target, tokens)
    program = make_program(target)
    model = compiling.compile_rasp_to_model(program, vocab=set(to_compiler.values()), max_seq_len=max_len,
                                            compiler_bos=BOS, compiler_pad=_COMPILER_PAD,
                                            mlp_exactness=mlp_exactness or exact_mlp_sharpness(max_len))
    params = {name: {k: np.asarray(v, dtype=np.float32) for k, v in group.items()}
              for name, group in model.params.items()}
    cfg = model.model_config

    # Re-index to the project's fixed layout (tracr_vocab): tokens in listed order, then BOS, PAD; the
    # answer classes in their natural order. Data can then be made from the config alone, without JAX.
    vocab = tracr_vocab(target.program, tokens, max_len)
    theirs = dict(model.input_encoder.encoding_map)
    theirs_of = {BOS: theirs[BOS], PAD: theirs[_COMPILER_PAD], **{t: theirs[to_compiler[t]] for t in tokens}}
    order = [theirs_of[t] for t, _ in sorted(vocab.token_ids.items(), key=lambda kv: kv[1])]
    params["token_embed"]["embeddings"] = params["token_embed"]["embeddings"][order]
    labels = list(model.residual_labels)
    unembed = np.zeros((len(labels), len(vocab.answers)), dtype=np.float32)
    for index, value in enumerate(vocab.answers):
        compiled_value = value if target.program == "counter" else to_compiler[value]
        unembed[labels.index(f"{program.label}:{compiled_value}"), index] = 1.0

    weights = {"tok_emb.weight": params["token_embed"]["embeddings"],
               "pos_emb.weight": params["pos_embed"]["embeddings"]}
    for i in range(cfg.num_layers):
        layer = f"transformer/layer_{i}"
        pairs = {"attn.q": "attn/query", "attn.k": "attn/key", "attn.v": "attn/value", "attn.proj": "attn/linear",
                 "mlp.fc": "mlp/linear_1", "mlp.out": "mlp/linear_2"}
        for ours, theirs in pairs.items():
            weights[f"blocks.{i}.{ours}.weight"] = params[f"{layer}/{theirs}"]["w"].T.copy()  # torch: (out, in)
            weights[f"blocks.{i}.{ours}.bias"] = params[f"{layer}/{theirs}"]["b"]
    return CompiledWeights(
        n_layer=cfg.num_layers, n_head=cfg.num_heads, key_size=cfg.key_size, d_mlp=cfg.mlp_hidden_size,
        d_model=len(labels), vocab=vocab, residual_labels=labels,
        unembed=unembed, weights=weights, compiled=model,
    )


def shape_of(compiled: CompiledWeights, readout_scale: float = 10.0) -> TracrShape:
    return TracrShape(
        n_layer=compiled.n_layer, n_head=compiled.n_head, key_size=compiled.key_size, d_mlp=compiled.d_mlp,
        d_model=compiled.d_model, vocab_size=compiled.vocab.size,
        n_positions=compiled.weights["pos_emb.weight"].shape[0], n_answers=len(compiled.vocab.answers),
        pad_id=compiled.vocab.token_ids[PAD], readout_scale=readout_scale,
    )


TRACR_COLDNESS = 100.0  # the inverse softmax temperature Tracr compiles attention with


def to_torch(compiled: CompiledWeights, readout_scale: float = 10.0,
             softmax_coldness: float = TRACR_COLDNESS) -> TracrTransformer:
    """The compiled weights as a TracrTransformer (all weights trainable; the read-out fixed).
    Attention logits are linear in the query weights, so scaling them by coldness / 100 is the model
    Tracr would compile with that coldness (BOS's fixed half-strength logit scales along)."""
    model = TracrTransformer(shape_of(compiled, readout_scale))
    state = {name: torch.from_numpy(np.array(w, dtype=np.float32)) for name, w in compiled.weights.items()}
    for name in state:
        if ".attn.q." in name:
            state[name] *= softmax_coldness / TRACR_COLDNESS
    state["unembed"] = torch.from_numpy(compiled.unembed)
    model.load_state_dict(state, strict=True)
    return model
