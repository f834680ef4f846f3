"""The Tracr setting: compiled Counter / Max-identifier are exact, the torch conversion equals the
JAX model, fine-tuning moves accuracy as expected, and a tiny sweep runs end to end."""

import subprocess
import sys
from functools import cache

import mlflow
import numpy as np
import pytest
import torch
import yaml

from wrapperdist.config import ConfigError, ExperimentConfig, load_config
from wrapperdist.models import load_model
from wrapperdist.setting import Runtime
from wrapperdist.settings.registry import setting_for
from wrapperdist.settings.tracr.compile import compile_target, compiler_tokens, to_torch
from wrapperdist.settings.tracr.config import TracrSection
from wrapperdist.settings.tracr.tasks import TracrTarget, TracrTasks, reference_answer, tracr_vocab
from wrapperdist.sink import MemorySink
from wrapperdist.stages import run_finetune, run_pretrain

QUIET = Runtime(threads=1, progress=False)
TRACR = {
    "name": "tiny-tracr", "seed": 0,
    "setting": {"name": "tracr", "program": "counter", "tokens": ["a", "b", "c"], "min_len": 1, "max_len": 6,
                "noise_std": 1e-4},
    "finetune": {"optim": {"optimizer": "sgd", "lr": 0.1, "steps": 300, "batch_size": 64, "eval_every": 100,
                           "weight_decay": 0.0}},
    "eval": {"samples": 300},
    "analysis": {"prune": {"ks": [0, 2, 5], "score_samples": 64, "random_controls": 1, "learned_steps": 10},
                 "probe": {"samples": 200, "steps": 50}, "reft": {"steps": 60, "eval_every": 20, "lr": 0.003},
                 "attention_prompts": 2},
}
LETTERS_AI, LETTERS_AZ = tuple("abcdefghi"), tuple("abcdefghijklmnopqrstuvwxyz")


@cache
def compiled(program: str, arg: str, tokens: tuple[str, ...], max_len: int):
    return compile_target(TracrTarget(program, arg), list(tokens), max_len)


def all_positions_exact(program: str, arg: str, tokens: tuple[str, ...], min_len: int, max_len: int,
                        seed: int, extra: list[list[str]] = ()) -> None:
    """Every position's output equals a direct computation, for 25 sampled sequences of every length
    min_len..max_len (left-padded batch; with replacement for counter, without for max_identifier)."""
    c = compiled(program, arg, tokens, max_len)
    model = to_torch(c, softmax_coldness=TracrSection().softmax_coldness)  # the default fine-tunes start from
    target = TracrTarget(program, arg)
    tasks = TracrTasks(c.vocab, tokens, min_len, max_len, replacement=program == "counter")
    rng = np.random.default_rng(seed)
    sequences = [s for n in range(min_len, max_len + 1)
                 for s in TracrTasks(c.vocab, tokens, n, n, tasks.replacement).sample(25, rng)] + list(extra)
    with torch.no_grad():
        predicted = model(torch.from_numpy(tasks.encode(sequences))).argmax(-1)
    for row, seq in enumerate(sequences):
        n = len(seq)
        want = reference_answer(target, seq, tokens)  # the program's output is the same at every position
        for i in range(1, n + 1):  # position of s_i in the right-aligned row: BOS at T-1-n
            got = c.vocab.answers[predicted[row, tasks.seq_len - 1 - n + i]]
            assert got == want, (seq, i, got, want)


@pytest.mark.parametrize("tokens,max_len,arg", [(LETTERS_AI, 16, "a"), (("a", "b"), 5, "b"),
                                                 (("x", "y", "z", "w"), 10, "w")])
def test_compiled_counter_is_exact(tokens, max_len, arg):
    """The 3-block Counter at the sweep's length (16), on sampled sequences and on every count 0..max_len."""
    every_count = [[arg] * k + [t for t in tokens if t != arg][:1] * (max_len - k) for k in range(max_len + 1)]
    all_positions_exact("counter", arg, tokens, 1, max_len, seed=len(tokens) * max_len, extra=every_count)
    assert compiled("counter", arg, tokens, max_len).n_layer == 3  # the paper's three blocks


def test_compiled_counter_is_exact_at_the_papers_length():
    """45 tokens of a-i (the paper's Fig. 10 inputs): exact only because SelectorWidth's MLP is
    compiled sharper than Tracr's default (which answers 9 for 10 a's)."""
    every_count = [["a"] * k + ["b"] * (45 - k) for k in range(0, 46, 3)]
    all_positions_exact("counter", "a", LETTERS_AI, 44, 45, seed=45, extra=every_count)


@pytest.mark.parametrize("tokens,min_len,max_len,arg", [(LETTERS_AZ, 10, 10, "5"), (LETTERS_AZ, 6, 10, "6"),
                                                         (("p", "q", "r", "s"), 2, 4, "2")])
def test_compiled_max_identifier_is_exact(tokens, min_len, max_len, arg):
    """The O_PT-th largest (earlier letters larger), 26 letters without replacement, 3 blocks."""
    all_positions_exact("max_identifier", arg, tokens, min_len, max_len, seed=len(tokens) * max_len)
    assert compiled("max_identifier", arg, tokens, max_len).n_layer == 3
    assert reference_answer(TracrTarget("max_identifier", "5"), list("bdafhmxpqn"), LETTERS_AZ) == "h"  # Fig. 13


@pytest.mark.parametrize("program,arg,tokens", [("counter", "a", ("a", "b", "c")),
                                                ("max_identifier", "1", tuple("abcdefgh"))])
def test_conversion_equals_the_jax_model(program, arg, tokens, tmp_path):
    """Residual stream after every block and the decoded outputs match Tracr's own forward pass;
    left padding changes nothing; a checkpoint round-trip keeps every tensor."""
    c = compiled(program, arg, tokens, 8)
    model = to_torch(c)  # Tracr's own coldness: bit-for-bit the compiled model
    to_compiler = compiler_tokens(TracrTarget(program, arg), list(tokens))
    rng = np.random.default_rng(0)
    for n in (1, 3, 8):
        seq = [tokens[i] for i in (rng.integers(0, len(tokens), size=n) if program == "counter"
                                   else rng.permutation(len(tokens))[:n])]
        out = c.compiled.apply(["BOS", *(to_compiler[s] for s in seq)])
        ids = torch.tensor([[c.vocab.token_ids["BOS"], *(c.vocab.token_ids[s] for s in seq)]])
        padded = torch.cat([torch.full((1, 8 - n), c.vocab.token_ids["PAD"]), ids], dim=1)
        names = [f"blocks.{i}.resid_post" for i in range(c.n_layer)]
        with torch.no_grad(), model.capture(names) as plain:
            logits = model(ids)
        with torch.no_grad(), model.capture(names) as pad:
            padded_logits = model(padded)
        for i, name in enumerate(names):  # Tracr collects the residual after each attn and each MLP
            jax_resid = np.asarray(out.residuals[2 * i + 1])[0]
            np.testing.assert_allclose(plain[name][0].numpy(), jax_resid, atol=1e-5)
            np.testing.assert_allclose(pad[name][0, 8 - n:].numpy(), jax_resid, atol=1e-5)
        decoded = [c.vocab.answers[k] for k in logits[0, 1:].argmax(-1).tolist()]
        assert decoded == [out.decoded[i] if program == "counter" else
                           {v: k for k, v in to_compiler.items()}[out.decoded[i]] for i in range(1, n + 1)]
        assert torch.equal(logits.argmax(-1)[0], padded_logits[0, 8 - n:].argmax(-1))
    from wrapperdist.train import save_checkpoint

    path = save_checkpoint(tmp_path / "m.pt", model, {"arch": "tracr", "shape": model.shape.to_dict()})
    loaded, _ = load_model(path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_core_install_does_not_import_jax():
    code = ("import sys, wrapperdist, wrapperdist.stages, wrapperdist.settings.registry, wrapperdist.cli, "
            "wrapperdist.settings.tracr.setting, wrapperdist.models.tracr_model; "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tracr_config_errors(tmp_path):
    bad = {**TRACR, "setting": {**TRACR["setting"], "window": 64}}  # a PCFG-only field
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="setting.window: Extra inputs are not permitted"):
        load_config(tmp_path / "a.yaml")
    bad = {**TRACR, "setting": {**TRACR["setting"], "finetune_target": "z"}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"setting: finetune_target 'z' is not one of \['a', 'b', 'c'\]"):
        load_config(tmp_path / "b.yaml")
    max_setting = {"name": "tracr", "program": "max_identifier", "min_len": 6, "max_len": 10}
    max_cfg = ExperimentConfig.model_validate({**TRACR, "setting": max_setting})
    assert (max_cfg.setting.pretrain_target, max_cfg.setting.finetune_target) == ("5", "6")
    assert max_cfg.setting.tokens == list(LETTERS_AZ)
    bad = {**TRACR, "setting": {**max_setting, "spurious_offset": -1}}  # the 6th largest comes after the 5th
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="spurious_offset: q = -1 cannot hold between ranks 5 and 6"):
        load_config(tmp_path / "c.yaml")
    bad = {**TRACR, "setting": {**max_setting, "min_len": 4}}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"min_len \(4\) is below rank 6"):
        load_config(tmp_path / "d.yaml")


@pytest.mark.parametrize("program,tokens,pt,ft,q,lengths", [("counter", LETTERS_AI, "a", "b", 1, (1, 45)),
                                                            ("counter", LETTERS_AI, "c", "a", -2, (3, 16)),
                                                            ("max_identifier", LETTERS_AZ, "5", "6", 1, (10, 10)),
                                                            ("max_identifier", LETTERS_AZ, "5", "7", 3, (7, 12))])
def test_planted_correlation(program, tokens, pt, ft, q, lengths):
    """C_Tr = 1: r(x, O_FT) - r(x, O_PT) = q on every example; C_Tr = 0: at the rate of plain uniform
    sequences (chance); C_Tr = 0.5 in between; C_Te = 1 eval sets planted throughout."""
    from wrapperdist.settings.tracr.setting import TracrData
    from wrapperdist.settings.tracr.tasks import relation_value

    section = TracrSection(program=program, tokens=list(tokens), pretrain_target=pt, finetune_target=ft,
                           min_len=lengths[0], max_len=lengths[1], spurious_offset=q)
    data = TracrData(section)
    a, b = TracrTarget(program, pt), TracrTarget(program, ft)

    def rate(fraction: float, seed: int, n: int = 3000) -> float:
        seqs = data.tasks.mixed(n, np.random.default_rng(seed), a, b, q, fraction)
        if program == "max_identifier":
            assert all(len(set(s)) == len(s) for s in seqs)  # without replacement
        return float(np.mean([relation_value(a, b, s, tokens) == q for s in seqs]))

    assert rate(1.0, 0) == 1.0
    chance = float(np.mean([relation_value(a, b, s, tokens) == q
                            for s in data.tasks.sample(3000, np.random.default_rng(1))]))
    assert 0.0 < chance < 0.5
    se = np.sqrt(chance * (1 - chance) / 3000)
    assert abs(rate(0.0, 2) - chance) < 4 * 1.42 * se
    assert abs(rate(0.5, 3) - (0.5 + 0.5 * chance)) < 0.05
    sets = data.eval_sets(200, np.random.default_rng(4))
    pt_te1, ft_te1 = sets["pt_acc_spurious"][1], sets["ft_acc_spurious"][1]
    answers = data.tasks.vocab.answers
    for x, y in zip(pt_te1, ft_te1, strict=True):
        shift = y - x if program == "counter" else tokens.index(answers[y]) - tokens.index(answers[x])
        assert shift == q


def _relation_by_hand(program: str, seq: list[str], tokens, pt: str, ft: str, q: int) -> bool:
    """r(x, O_FT) - r(x, O_PT) = q, written out again: counts, or alphabet indices of ranked letters."""
    if program == "counter":
        return seq.count(ft) - seq.count(pt) == q
    ranked = sorted(seq, key=list(tokens).index)  # earlier letters are larger: the largest first
    return list(tokens).index(ranked[int(ft) - 1]) - list(tokens).index(ranked[int(pt) - 1]) == q


def _decoded(vocab, tokens: np.ndarray) -> list[list[str]]:
    return [[vocab.decode(int(t)) for t in row if vocab.decode(int(t)) not in ("BOS", "PAD")] for row in tokens]


@pytest.mark.parametrize("program,tokens,pt,ft,q,lengths", [("counter", LETTERS_AI, "a", "b", 1, (1, 16)),
                                                            ("counter", LETTERS_AI, "c", "a", -2, (3, 16)),
                                                            ("max_identifier", LETTERS_AZ, "5", "6", 1, (10, 10)),
                                                            ("max_identifier", LETTERS_AZ, "5", "7", 3, (7, 12))])
def test_held_out_sets_exclude_and_include_the_relation(program, tokens, pt, ft, q, lengths):
    """C_Te = 0: the relation holds on no example; C_Te = 1: on every one; plain: by chance, between.
    Recomputed from the decoded tokens; labels are the true answers; the plain sets are the old C_Te = 0
    sets (same seed, same arrays, rebuilt the old way)."""
    from wrapperdist.settings.tracr.setting import TracrData

    section = TracrSection(program=program, tokens=list(tokens), pretrain_target=pt, finetune_target=ft,
                           min_len=lengths[0], max_len=lengths[1], spurious_offset=q)
    data = TracrData(section)
    sets = data.eval_sets(300, np.random.default_rng(4))
    vocab = data.tasks.vocab
    rates = {}
    for key, (encoded, answers) in sets.items():
        seqs = _decoded(vocab, encoded)
        assert all(lengths[0] <= len(s) <= lengths[1] for s in seqs)
        target = TracrTarget(program, pt if key.startswith("pt_") else ft)
        assert [vocab.answers[a] for a in answers] == [reference_answer(target, s, tokens) for s in seqs]
        rates[key] = np.mean([_relation_by_hand(program, s, tokens, pt, ft, q) for s in seqs])
    assert rates["pt_acc"] == rates["ft_acc"] == 0.0
    assert rates["pt_acc_spurious"] == rates["ft_acc_spurious"] == 1.0
    assert 0.0 < rates["pt_acc_plain"] < 1.0 and 0.0 < rates["ft_acc_plain"] < 1.0
    rng = np.random.default_rng(4)
    old = {"pt_acc_plain": data.batch("capability", 300, rng), "ft_acc_plain": data.batch("target", 300, rng)}
    planted = data.planted(300, rng)
    old |= {"pt_acc_spurious": data.tasks.labelled(planted, data.capability),
            "ft_acc_spurious": data.tasks.labelled(planted, data.target)}
    for key, (encoded, answers) in old.items():
        assert np.array_equal(sets[key][0], encoded) and np.array_equal(sets[key][1], answers), key


def test_an_empty_c_te_0_is_an_error_not_a_loop():
    """Every letter in every sequence: the 5th and 6th largest are always neighbours, nothing fails q = 1."""
    tasks = TracrTasks(tracr_vocab("max_identifier", list("abcdefgh"), 8), list("abcdefgh"), 8, 8, replacement=False)
    with pytest.raises(ValueError, match="holds on almost every sequence"):
        tasks.sample_without(10, np.random.default_rng(0), TracrTarget("max_identifier", "5"),
                             TracrTarget("max_identifier", "6"), 1, max_rounds=3)


def test_tracr_floors_equal_a_brute_force_count():
    """floor.modal by collections.Counter over the labels, floor.relation recomputed sequence by
    sequence, floor.random_init from a fresh model of the compiled one's shape."""
    from collections import Counter

    from wrapperdist.models import random_like
    from wrapperdist.train import answer_accuracy

    cfg = ExperimentConfig.model_validate(TRACR)
    setting = setting_for(cfg)
    model = to_torch(compiled("counter", "a", ("a", "b", "c"), 6))
    floors = setting.floors(cfg, model)
    sets = setting.eval_tensors(cfg)
    assert set(sets) == set(setting.eval_metrics)
    vocab = setting.tasks(cfg).tasks.vocab
    fresh = random_like(model, cfg.seed + 1)
    for key, (encoded, answers) in sets.items():
        labels = answers.tolist()
        assert floors[f"floor.modal.{key}"] == Counter(labels).most_common(1)[0][1] / len(labels)
        held = [_relation_by_hand("counter", s, "abc", "a", "b", 1) for s in _decoded(vocab, encoded.numpy())]
        assert floors[f"floor.relation.{key}"] == np.mean(held)
        assert floors[f"floor.random_init.{key}"] == answer_accuracy(fresh, encoded, answers)
    assert floors["floor.relation.pt_acc"] == 0.0 and floors["floor.relation.pt_acc_spurious"] == 1.0
    assert 0.0 < floors["floor.relation.pt_acc_plain"] < 1.0
    assert setting.evaluator(cfg)(model)["pt_acc"] == 1.0  # the compiled Counter, on C_Te = 0 too


def test_single_weight_pruning_removes_a_planted_weight():
    """Plant one weight that makes the compiled Counter answer 0 everywhere (block 2's broadcast head
    reads the constant `one` direction into its count-0 value): Alg. 3 on single weights ranks it
    first, names it as the paper would, and removing it alone restores the compiled count exactly."""
    from wrapperdist.mech import rank_rows, weight_scores, weights_removed
    from wrapperdist.settings.tracr.weights_analysis import SINGLE_TOP, paper_weight_label

    c = compiled("counter", "a", ("a", "b", "c"), 6)
    model = to_torch(c)
    tasks = TracrTasks(c.vocab, ("a", "b", "c"), 1, 6)
    x, y = (torch.from_numpy(t) for t in tasks.task_batch(256, np.random.default_rng(0), TracrTarget("counter", "a")))

    def acc() -> float:
        with torch.no_grad():
            return float((model(x, last_only=True).argmax(-1) == y).float().mean())

    labels = c.residual_labels  # Tracr suffixes names with ids: width_a_3:0
    one = labels.index("one")
    width0 = next(i for i, label in enumerate(labels) if label.startswith("width_a") and label.endswith(":0"))
    value = model.blocks[2].attn.v.weight  # (head dims, residual)
    head_dim = int(value[:, width0].abs().argmax())
    assert value[head_dim, width0] != 0.0 and value[head_dim, one] == 0.0
    with torch.no_grad():
        value[head_dim, one] = 3.0
    assert acc() < 0.5  # the planted behaviour: "0" whenever count(a) > 0
    # Alg. 3's ranking, then the analysis's "best single weight" among its top SINGLE_TOP: the compiled
    # SelectorWidth's weights score high too (grad x weight of a saturated softmax and of its sharp MLP)
    top = rank_rows(weight_scores(model, x, y, "blocks"))[:SINGLE_TOP]
    planted = ("blocks.2.attn.v.weight", head_dim * value.shape[1] + one)
    assert planted in top
    alone = {}
    for w in top:
        with weights_removed(model, [w]):
            alone[w] = acc()
    best = max(alone, key=alone.get)
    assert best == planted and alone[best] == 1.0  # removing it alone restores the compiled count exactly
    assert paper_weight_label(model, best) == f"B2WV{one}-{head_dim}"
    assert paper_weight_label(model, ("blocks.1.mlp.fc.weight", 1)) == "B1W1_1-0"  # torch (out 0, in 1)
    assert acc() < 0.5  # and the removal was temporary


def test_attention_shares_of_the_compiled_counter():
    """The compiled Counter's counting attention (block 1) sits on the a's and BOS (k a's: k/(k+1) on them), none
    on the b's."""
    from wrapperdist.settings.tracr.weights_analysis import attention_shares

    c = compiled("counter", "a", ("a", "b", "c"), 6)
    tasks = TracrTasks(c.vocab, ("a", "b", "c"), 4, 6)
    shares = attention_shares(to_torch(c), tasks, tasks.sample(50, np.random.default_rng(0)),
                              TracrTarget("counter", "a"), TracrTarget("counter", "b"))
    assert shares["attention_on_a.block1"] > 0.4 and shares["attention_on_b.block1"] < 0.01


def test_finetuning_the_compiled_counter(tmp_path):
    """Compiled: pt_acc 1, ft_acc at chance. A few hundred SGD steps teach count(b) and the
    compiled behaviour is gone from the output (the question the analyses then ask is: from inside?)."""
    cfg = ExperimentConfig.model_validate(TRACR)
    setting = setting_for(cfg)
    pretrain = run_pretrain(setting, cfg, tmp_path / "pt", MemorySink(), QUIET)
    assert pretrain.metrics["pt_acc"] == 1.0 and pretrain.metrics["ft_acc"] < 0.5
    sink = MemorySink()
    finetune = run_finetune(setting, cfg, pretrain.checkpoint, tmp_path / "ft", sink, QUIET)
    assert finetune.metrics["ft_acc"] > 0.9, sink.history("ft_acc")
    assert finetune.metrics["pt_acc"] < 0.6
    # the vocabulary layout is the project's, fixed by the config alone
    assert tracr_vocab("counter", ["a", "b", "c"], 6).token_ids == {"a": 0, "b": 1, "c": 2, "BOS": 3, "PAD": 4}
    model, meta = load_model(finetune.checkpoint)
    assert meta["arch"] == "tracr"
    assert setting.evaluator(cfg)(model)["ft_acc"] == finetune.metrics["ft_acc"]


def test_tracr_sweep_end_to_end(tmp_path, monkeypatch):
    from wrapperdist.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    light = {**TRACR, "tracking": {"experiment": "tr"},  # the plumbing, not the result: short stages
             "finetune": {"optim": {**TRACR["finetune"]["optim"], "steps": 60, "eval_every": 30}},
             "analysis": {**TRACR["analysis"], "reft": {"steps": 20, "eval_every": 10, "lr": 0.003}},
             "eval": {"samples": 150}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(light))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "tr", "experiment": "exp.yaml", "storage_path": str(tmp_path / "results"),
        "grid": {"finetune.optim.lr": [0.1, 0.01]}, "revival_budgets": [20]}))
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--local"]) == 0
    runs = mlflow.search_runs(experiment_names=["tr"], output_format="list")
    assert all(r.info.status == "FINISHED" for r in runs)
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.data.tags.get("wrapperdist.stage"), []).append(r)
    assert len(by_stage["pretrain"]) == 2  # the compiled program and the Scr.+FT control (compiled for 'b')
    assert all(r.data.metrics["pt_acc"] == 1.0 for r in by_stage["pretrain"] if "control" not in r.info.run_name)
    assert len(by_stage["finetune"]) == 2 and len(by_stage["analysis"]) == 2 and len(by_stage["reft"]) == 2
    for r in by_stage["analysis"]:
        changes = {k: v for k, v in r.data.metrics.items() if k.startswith("weights.change.")}
        assert "weights.change.blocks.0.attn.k.weight" in changes and max(changes.values()) > 0
        # both of Alg. 3's units: single weights (the paper's, for compiled models) and rows (the PCFG's)
        assert {"prune.paper.pt_acc", "prune.rows.pt_acc", "prune.random.pt_acc"} <= set(r.data.metrics)
