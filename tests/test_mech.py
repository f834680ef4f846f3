"""Mechanics of the analyses on tiny models, with assertions that can fail."""

import numpy as np
import pytest
import torch

from wrapperdist.mech import (
    CurvePoint,
    Evidence,
    attention_patterns,
    grad_x_weight_scores,
    held_out_gain,
    judge,
    learned_removal_mask,
    pattern_shift,
    probe_layers,
    probe_layers_fresh,
    random_ranking,
    random_row_ranking,
    rank_rows,
    rank_units,
    removal_curve,
    row_scores,
    rows_removed,
    steps_to_reach,
    train_probe,
    units_removed,
    weight_label,
    weight_scores,
    weights_removed,
)
from wrapperdist.models import GPT, GPTShape

SHAPE = GPTShape(vocab_size=12, seq_len=8, n_layer=2, n_head=2, d_model=16, d_mlp=24)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(SHAPE).eval()


def _batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, SHAPE.vocab_size, (n, SHAPE.seq_len), generator=g)
    return tokens, tokens[:, 0] % 4  # a learnable target: the first token mod 4


def test_units_removed_zeroes_exactly_and_restores(model):
    tokens, _ = _batch()
    before = model(tokens)
    with units_removed(model, [(0, 3), (1, 7)]), model.capture(["blocks.0.mlp.hidden", "blocks.1.mlp.hidden"]) as c:
        during = model(tokens)
        assert c["blocks.0.mlp.hidden"][..., 3].abs().max() == 0
        assert c["blocks.1.mlp.hidden"][..., 7].abs().max() == 0
        assert c["blocks.0.mlp.hidden"][..., 4].abs().max() > 0
    assert not torch.allclose(before, during)
    torch.testing.assert_close(model(tokens), before)  # masks gone afterwards


def test_grad_x_weight_is_first_order_effect_of_removal(model):
    """The score of a unit predicts the loss change of removing it (first-order Taylor)."""
    tokens, answers = _batch(256)
    scores = grad_x_weight_scores(model, tokens, answers)
    assert [s.shape for s in scores] == [(SHAPE.d_mlp,)] * SHAPE.n_layer
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        base = loss(model(tokens, last_only=True), answers).item()
        deltas = []
        for layer in range(SHAPE.n_layer):
            for unit in range(SHAPE.d_mlp):
                with units_removed(model, [(layer, unit)]):
                    deltas.append(loss(model(tokens, last_only=True), answers).item() - base)
    predicted = -torch.cat(scores).numpy()
    corr = np.corrcoef(predicted, np.array(deltas))[0, 1]
    assert corr > 0.9, corr


def test_rank_units_orders_by_score():
    ranking = rank_units([torch.tensor([0.1, 0.5]), torch.tensor([0.3, -1.0])])
    assert ranking == [(0, 1), (1, 0), (0, 0), (1, 1)]


def test_removal_curve_k0_is_unpruned(model):
    tokens, answers = _batch()

    def evaluate(m):
        return {"acc": (m(tokens, last_only=True).argmax(-1) == answers).float().mean().item()}

    curve = removal_curve(model, random_ranking(model, 0), [0, 5, 48], evaluate)
    assert curve[0].metrics == evaluate(model) and [p.k for p in curve] == [0, 5, 48]


def _plant_harmful_units(model, harmful):
    """Make some units push the logits toward a wrong answer: removing them is what helps."""
    with torch.no_grad():
        for layer, unit in harmful:
            model.blocks[layer].mlp.fc.bias[unit] = 5.0
            model.blocks[layer].mlp.out.weight[:, unit] = 0.0
            model.blocks[layer].mlp.out.weight[:, unit] += 0.5 * model.head.weight[11]  # toward token 11


def test_learned_mask_finds_planted_units_and_beats_random(model):
    harmful = [(0, 2), (1, 5), (1, 9)]
    _plant_harmful_units(model, harmful)
    tokens, answers = _batch(512, seed=1)
    answers = torch.zeros_like(answers)  # target never 11: the planted units only hurt

    def batches():
        while True:
            yield tokens, answers

    learned = learned_removal_mask(model, batches(), steps=150, lr=0.1, penalty=0.05)
    assert set(harmful) <= set(learned.ranking[:6])
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad(), units_removed(model, learned.ranking[:3]):
        learned_loss = loss(model(tokens, last_only=True), answers).item()
    random_losses = []
    for seed in range(5):
        with torch.no_grad(), units_removed(model, random_ranking(model, seed)[:3]):
            random_losses.append(loss(model(tokens, last_only=True), answers).item())
    assert learned.ranking[:3] != random_ranking(model, 0)[:3]
    assert learned_loss < min(random_losses)
    assert all(p.requires_grad for p in model.parameters())  # weights unfrozen afterwards


def test_probe_recovers_planted_linear_target():
    """A target written linearly into some coordinates is decoded; a random target is not."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 32, generator=g)
    target = torch.randint(0, 5, (2000,), generator=g)
    x[:, :5] += 6.0 * torch.nn.functional.one_hot(target, 5).float()
    planted = train_probe(x[:1500], target[:1500], x[1500:], target[1500:], 5, steps=300, lr=1e-2)
    noise = torch.randint(0, 5, (2000,), generator=g)
    unrelated = train_probe(x[:1500], noise[:1500], x[1500:], noise[1500:], 5, steps=300, lr=1e-2)
    assert planted.test_acc > 0.95
    assert unrelated.test_acc < 0.35


def test_probe_layers_covers_every_depth(model):
    tokens, _ = _batch(200)
    results = probe_layers(model, tokens, tokens[:, -1] % 3, 3, steps=300, lr=1e-2)
    assert list(results) == ["embed", "blocks.0.resid_post", "blocks.1.resid_post"]
    # the last token itself is in the residual stream at the answer position: trivially decodable
    assert results["embed"].test_acc > 0.9


def test_fresh_probes_decode_what_is_there_and_nothing_else(model):
    """The paper's protocol: a new batch at every step. The last token (in the residual stream at the
    answer position) is decoded at every depth's embedding; a label independent of the tokens is not;
    and every training batch was a new draw."""
    seen = []

    def stream(label):
        seed = 100
        while True:
            tokens, _ = _batch(64, seed)
            seen.append(seed)
            seed += 1
            yield tokens, label(tokens)

    test_tokens, _ = _batch(300, seed=1)
    decodable = probe_layers_fresh(model, stream(lambda t: t[:, -1] % 3), test_tokens, test_tokens[:, -1] % 3, 3,
                                   steps=150, lr=1e-2)
    assert list(decodable) == ["embed", "blocks.0.resid_post", "blocks.1.resid_post"]
    assert decodable["embed"].test_acc > 0.9
    assert len(seen) == len(set(seen)) == 150  # one fresh batch per step, none reused
    g = torch.Generator().manual_seed(3)
    noise = probe_layers_fresh(model, stream(lambda t: torch.randint(0, 3, (len(t),), generator=g)), test_tokens,
                               torch.randint(0, 3, (300,), generator=g), 3, steps=150, lr=1e-2)
    assert max(r.test_acc for r in noise.values()) < 0.45  # chance is 1/3


def test_attention_patterns_and_shift(model):
    tokens, _ = _batch(4)
    p = attention_patterns(model, tokens)
    assert p.shape == (SHAPE.n_layer, 4, SHAPE.n_head, SHAPE.seq_len, SHAPE.seq_len)
    assert pattern_shift(p, p).abs().max() == 0
    other = GPT(SHAPE).eval()
    shift = pattern_shift(p, attention_patterns(other, tokens))
    assert shift.shape == (SHAPE.n_layer, SHAPE.n_head) and (shift > 0).all() and (shift <= 1).all()


def test_steps_to_reach():
    curve = [(0, 0.1), (20, 0.5), (40, 0.92), (60, 0.95)]
    assert steps_to_reach(curve, 0.9) == 40
    assert steps_to_reach(curve, 0.99) is None
    assert steps_to_reach(curve, 0.05) == 0


def test_verdict_thresholds():
    base = dict(pt_acc_finetuned=0.05, prune_best_gain=0.5, prune_best_k=10, prune_heldout_gain=0.45,
                prune_selected_k=10, probe_finetuned=0.9,
                probe_random_init=0.3, probe_pretrained=0.95, reft_steps_finetuned=40, reft_steps_control=300,
                reft_budget=400)
    assert judge(Evidence(**base), 0.3, 0.15, 2.0).label == "wrapper"
    changed = {**base, "prune_heldout_gain": 0.0, "probe_finetuned": 0.35, "reft_steps_finetuned": 280}
    assert judge(Evidence(**changed), 0.3, 0.15, 2.0).label == "capability changed"
    never = {**base, "reft_steps_control": None}  # control never got there: counts as budget + 1
    assert judge(Evidence(**never), 0.3, 0.15, 2.0).reft_speedup == pytest.approx(401 / 40)
    assert judge(Evidence(**base), 0.3, 0.15, 10.0).label == "mixed"  # stricter speed-up not met
    # pruning is judged on the held-out gain: a best-K gain read off the scored set does not count
    selected = {**base, "prune_best_gain": 0.5, "prune_heldout_gain": 0.1}
    assert not judge(Evidence(**selected), 0.3, 0.15, 2.0).pruning_revives


def test_held_out_gain_picks_k_on_one_split_and_scores_it_on_the_other():
    curve = [CurvePoint(0, {"sel": 0.1, "test": 0.2}), CurvePoint(5, {"sel": 0.6, "test": 0.3}),
             CurvePoint(10, {"sel": 0.6, "test": 0.9}), CurvePoint(15, {"sel": 0.2, "test": 1.0}),
             CurvePoint(30, {"sel": 0.99, "test": 0.99})]
    got = held_out_gain(curve, "sel", "test", max_k=15)
    # K = 5 and 10 tie on the selection split: the smaller wins; K = 15 is best on the test set but not chosen
    assert (got.k, got.gain, got.selection_gain) == (5, pytest.approx(0.1), pytest.approx(0.5))
    with pytest.raises(ValueError, match="K <= -1"):
        held_out_gain(curve, "sel", "test", max_k=-1)


def _planted(seed: int, hidden_on: bool):
    """A model, its own answers, and where to plant a one-unit wrapper: hidden unit 0 of the last MLP
    (fc row 0, zero weights; on = constant gelu(5), off = 0) writes only residual feature i (out
    column 0), and through the final LayerNorm a large feature i makes `wrong` (the token the head
    row-weights most on i) win everywhere. Unplanted, the unit adds nothing, so removal is exact."""
    torch.manual_seed(seed)
    model = GPT(SHAPE).eval()
    mlp = model.blocks[-1].mlp
    i = 3
    with torch.no_grad():
        mlp.fc.weight[0], mlp.fc.bias[0] = 0.0, 5.0 if hidden_on else 0.0
        mlp.out.weight[:, 0] = 0.0
        if not hidden_on:
            mlp.out.weight[i, 0] = 200.0
    tokens, _ = _batch(128)
    with torch.no_grad():
        answers = model(tokens, last_only=True).argmax(-1)
    wrong = int(model.head.weight[:, i].argmax())
    assert (answers == wrong).float().mean() < 0.3

    def accuracy() -> float:
        with torch.no_grad():
            return (model(tokens, last_only=True).argmax(-1) == answers).float().mean().item()

    return model, tokens, answers, accuracy, i


def test_row_pruning_finds_a_planted_row_and_restores_the_behaviour():
    """Alg. 3 on weight rows: plant one MLP unit (its fc row's bias) that makes a wrong answer win
    everywhere — a wrapper in one row; one step of grad x weight ranks that row first, and zeroing
    it (bias included) brings back every original answer, while zeroing random rows does not."""
    model, tokens, answers, accuracy, _ = _planted(0, hidden_on=False)
    fc = model.blocks[-1].mlp.fc
    assert accuracy() == 1.0
    with torch.no_grad():
        fc.bias[0] = 5.0
    assert accuracy() < 0.3
    ranking = rank_rows(row_scores(model, tokens, answers, scope="blocks"))
    assert ranking[0] == (f"blocks.{SHAPE.n_layer - 1}.mlp.fc.weight", 0)
    with rows_removed(model, ranking[:1]):
        assert fc.bias[0] == 0.0 and accuracy() == 1.0
    assert fc.bias[0] == 5.0 and accuracy() < 0.3  # weights and bias restored on exit
    curve = removal_curve(model, random_row_ranking(model, seed=0, scope="blocks"), [1, 5],
                          lambda m: {"acc": accuracy()}, rows_removed)
    assert all(p.metrics["acc"] < 0.3 for p in curve)
    assert all(name.startswith("blocks.") for name in row_scores(model, tokens, answers, scope="blocks"))
    assert "head.weight" in row_scores(model, tokens, answers, scope="all")


def test_single_weight_pruning_finds_a_planted_weight():
    """Alg. 3 on single weights (the paper's unit for Tracr): the one planted weight ranks first, and
    zeroing it alone restores the behaviour."""
    model, tokens, answers, accuracy, i = _planted(1, hidden_on=True)
    out = model.blocks[-1].mlp.out
    assert accuracy() == 1.0
    with torch.no_grad():
        out.weight[i, 0] = 200.0
    assert accuracy() < 0.3
    ranking = rank_rows(weight_scores(model, tokens, answers, scope="blocks"))
    name = f"blocks.{SHAPE.n_layer - 1}.mlp.out.weight"
    assert ranking[0] == (name, i * out.weight.shape[1]) and weight_label(model, ranking[0]) == f"{name}[{i}, 0]"
    with weights_removed(model, ranking[:1]):
        assert accuracy() == 1.0
    assert out.weight[i, 0] == 200.0  # restored
