"""The PCFG protocol of the paper beyond the data: the held-out sets C_Te = 0 / 1 / plain and their
floors, the Scr.+FT control, next-token pretraining, the reFT learning-rate rule, and what the analysis
diagnoses."""

from collections import Counter

import numpy as np
import pytest
import torch
from conftest import TINY

from wrapperdist.config import ExperimentConfig
from wrapperdist.identity import node_key
from wrapperdist.settings.registry import setting_for
from wrapperdist.train import loss_on_batch, next_token_loss


def _cfg(**setting) -> ExperimentConfig:
    return ExperimentConfig.model_validate({**TINY, "setting": {**TINY["setting"], **setting}})


def test_scr_ft_control_is_trained_on_the_finetuning_task_alone_and_shared_by_all_priors():
    cfg = _cfg(prior="low")
    setting = setting_for(cfg)
    control = setting.control_config(cfg)
    tokens, answers = next(setting.batches(control, "pretrain", 512))
    vocab = setting.tasks(control).tasks.vocab
    assert {vocab.decode(int(t)) for t in tokens[:, 1]} == {"<counter>"}
    assert {vocab.decode(int(t)) for t in tokens[:, 2]} == {"b"}  # O_FT only: it never sees a count-a prompt
    keys = {node_key("pretrain", setting, setting.control_config(_cfg(prior=p))) for p in ("low", "medium", "high")}
    assert len(keys) == 1  # one Scr.+FT model per seed, whatever the prior
    swapped = setting.control_config(_cfg(prior="medium", control="swapped-prior"))
    assert swapped.setting.prior_vector() == (0.1, 0.9, 0.0)


def test_next_token_pretraining_loss_covers_the_whole_sequence():
    cfg = _cfg()
    setting = setting_for(cfg)
    assert setting.loss_fn(cfg, "pretrain") is next_token_loss
    assert setting.loss_fn(cfg, "finetune") is loss_on_batch and setting.loss_fn(cfg, "reft") is loss_on_batch
    assert setting.loss_fn(_cfg(pretrain_objective="answer"), "pretrain") is loss_on_batch
    torch.manual_seed(0)
    model = setting.build_model(cfg)
    tokens, answers = (torch.from_numpy(x) for x in next(setting.batches(cfg, "pretrain", 8)))
    logits = model(tokens)  # (B, T, V): every position predicts the next token, the last one the answer
    by_hand = torch.stack([torch.nn.functional.cross_entropy(logits[b, t], (tokens[b, t + 1] if t + 1 < tokens.shape[1]
                                                                                 else answers[b]))
                           for b in range(tokens.shape[0]) for t in range(tokens.shape[1])]).mean()
    assert torch.isclose(next_token_loss(model, tokens, answers), by_hand, atol=1e-5)
    assert not torch.isclose(next_token_loss(model, tokens, answers), loss_on_batch(model, tokens, answers))


def test_scr_ft_controls_of_different_tasks_are_different_models():
    setting = setting_for(_cfg())
    keys = {node_key("pretrain", setting, setting.control_config(_cfg(task={"family": "counter", "operand": o})))
            for o in ("b", "c")}
    assert len(keys) == 2


@pytest.mark.parametrize("reft,error", [
    ({"lr": 1e-4}, None), ({"lr": 1e-3}, "must be below the fine-tuning LR"),
    ({"lr": 3e-3}, "must be below the fine-tuning LR"), ({"lr_factor": 0.1}, None),
    ({"lr": 1e-3, "below_finetune": False}, None), ({"lr": 1e-4, "lr_factor": 0.1}, "lr or lr_factor, not both")])
def test_reft_lr_must_be_below_the_finetuning_lr(reft, error):
    data = {**TINY, "analysis": {**TINY["analysis"], "reft": {"steps": 20, "eval_every": 10, **reft}}}
    assert TINY["finetune"]["optim"]["lr"] == 1e-3
    if error is None:
        cfg = ExperimentConfig.model_validate(data)
        assert cfg.analysis.reft.effective_lr(1e-3) < 1e-3 or not cfg.analysis.reft.below_finetune
    else:
        with pytest.raises(ValueError, match=error):
            ExperimentConfig.model_validate(data)


def _decoded(data, tokens: np.ndarray) -> list[tuple[str, str, list[str]]]:
    """(family, operand, text) of each encoded row, read token by token through the vocabulary."""
    vocab = data.tasks.vocab
    return [(vocab.decode(int(row[1])), vocab.decode(int(row[2])), [vocab.decode(int(t)) for t in row[5:-2]])
            for row in tokens]


def _relation_by_hand(text: list[str], n_last: int, offset: int) -> bool:
    last = text[len(text) - n_last:]
    return last.count("b") == last.count("a") + offset


@pytest.mark.parametrize("offset", [1, -2])
def test_held_out_sets_exclude_and_include_the_planted_relation(offset):
    """C_Te = 0: count(b) = count(a) + q holds on no example; C_Te = 1: on every one; plain strings: by
    chance, between the two. Recomputed from the decoded tokens, and the labels are the true counts."""
    cfg = _cfg(spurious_offset=offset)
    data = setting_for(cfg).tasks(cfg)
    sets = data.eval_sets(400, np.random.default_rng(5))
    assert {"pt_acc", "ft_acc", "pt_acc_spurious", "ft_acc_spurious", "pt_acc_plain", "ft_acc_plain"} <= set(sets)
    rates = {}
    for key, (tokens, answers) in sets.items():
        if key == "mix_acc":
            continue
        rows = _decoded(data, tokens)
        operand = "a" if key.startswith("pt_") else "b"
        assert {(family, op) for family, op, _ in rows} == {("<counter>", operand)}
        assert [data.tasks.vocab.decode(int(a)) for a in answers] == [str(t[-8:].count(operand)) for _, _, t in rows]
        rates[key] = np.mean([_relation_by_hand(text, 8, offset) for _, _, text in rows])
    assert rates["pt_acc"] == rates["ft_acc"] == 0.0
    assert rates["pt_acc_spurious"] == rates["ft_acc_spurious"] == 1.0
    assert 0.05 < rates["pt_acc_plain"] < 0.6 and 0.05 < rates["ft_acc_plain"] < 0.6  # C_Te = 0 had some to drop
    # O_PT and O_FT are asked about the same strings on C_Te = 0 (the relation is the string's)
    assert (sets["pt_acc"][0][:, 5:] == sets["ft_acc"][0][:, 5:]).all()


def test_plain_sets_are_the_old_c_te_0_sets():
    """Same seed, same arrays: the plain sets are what C_Te = 0 was before it excluded the relation (and
    C_Te = 1 and the mixture are drawn as before); rebuilt here the old way, draw by draw."""
    cfg = _cfg()
    data = setting_for(cfg).tasks(cfg)
    sets = data.eval_sets(200, np.random.default_rng(cfg.eval.seed))
    rng = np.random.default_rng(cfg.eval.seed)
    old_pt, old_ft = data.batch("capability", 200, rng), data.batch("target", 200, rng)
    correlated = data.tasks.plant(data.tasks.texts(200, rng), data.target, data.capability, 1, rng)
    old_mix = data.batch("pretrain", 200, rng)
    expected = {"pt_acc_plain": old_pt, "ft_acc_plain": old_ft, "mix_acc": old_mix,
                "pt_acc_spurious": data.tasks.labelled(correlated, data.capability),
                "ft_acc_spurious": data.tasks.labelled(correlated, data.target)}
    for key, (tokens, answers) in expected.items():
        assert np.array_equal(sets[key][0], tokens) and np.array_equal(sets[key][1], answers), key
    again = data.eval_sets(200, np.random.default_rng(cfg.eval.seed))  # C_Te = 0 is seeded too
    assert all(np.array_equal(again[k][i], sets[k][i]) for k in sets for i in (0, 1))
    # ... and the Scr.+FT control, whose pretraining set draws differently, has the same C_Te = 0
    control = setting_for(cfg).control_config(cfg)
    theirs = setting_for(control).tasks(control).eval_sets(200, np.random.default_rng(cfg.eval.seed))
    assert not np.array_equal(theirs["mix_acc"][0], sets["mix_acc"][0])
    assert all(np.array_equal(theirs[k][i], sets[k][i]) for k in ("pt_acc", "ft_acc") for i in (0, 1))


def test_without_a_planted_relation_the_sets_are_unchanged():
    """The indexer plants no relation: C_Te = 0 stays the plain strings, no C_Te = 1, no plain copy."""
    cfg = _cfg(spurious_fraction=0.0, task={"family": "index_of_occurrence", "operand": "b"})
    setting = setting_for(cfg)
    data = setting.tasks(cfg)
    sets = data.eval_sets(100, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    old = {"pt_acc": data.batch("capability", 100, rng), "ft_acc": data.batch("target", 100, rng),
           "mix_acc": data.batch("pretrain", 100, rng)}
    assert set(sets) == set(old) and all(np.array_equal(sets[k][i], old[k][i]) for k in old for i in (0, 1))
    assert data.relation_holds(sets["pt_acc"][0]) is None
    assert not any(k.startswith("floor.relation.") for k in setting.floors(cfg, setting.build_model(cfg)))


def test_floors_equal_a_brute_force_count():
    """floor.modal: the most common label's share (collections.Counter); floor.relation: the relation
    recomputed string by string; floor.random_init: a fresh model of the seed, evaluated by hand. And
    computing them leaves torch's RNG alone (a stage that logs them trains as before)."""
    cfg = _cfg()
    setting = setting_for(cfg)
    data = setting.tasks(cfg)
    torch.manual_seed(0)
    model = setting.build_model(cfg)
    state = torch.get_rng_state()
    floors = setting.floors(cfg, model)
    assert torch.equal(state, torch.get_rng_state())
    from wrapperdist.models import random_like

    fresh = random_like(model, cfg.seed + 1).eval()
    sets = setting.eval_tensors(cfg)
    assert set(sets) == set(setting.eval_metrics)
    for key, (tokens, answers) in sets.items():
        labels = answers.tolist()
        assert floors[f"floor.modal.{key}"] == Counter(labels).most_common(1)[0][1] / len(labels), key
        texts = [text for _, _, text in _decoded(data, tokens.numpy())]
        assert floors[f"floor.relation.{key}"] == np.mean([_relation_by_hand(t, 8, 1) for t in texts]), key
        with torch.no_grad():
            said = [int(fresh(row[None])[0, -1].argmax()) for row in tokens]
        assert floors[f"floor.random_init.{key}"] == np.mean([s == a for s, a in zip(said, labels, strict=True)])
    assert floors["floor.relation.pt_acc"] == 0.0 and floors["floor.relation.pt_acc_spurious"] == 1.0
    assert 0.0 < floors["floor.relation.pt_acc_plain"] < 1.0


def test_answer_breakdown_tells_a_wrapper_from_a_counter():
    """An oracle that answers count(b) on count-a prompts is all `count_ft`; one that answers count(a)
    is all `count_pt`. The prompts exclude the planted relation (C_Te = 0), so the count(b) oracle never
    looks like count(a) + 1 and one that answers count(a) + 1 never looks like count(b)."""
    cfg = _cfg()
    data = setting_for(cfg).tasks(cfg)

    class Oracle(torch.nn.Module):
        def __init__(self, task, plus=0):
            super().__init__()
            self.task, self.plus = task, plus

        def forward(self, tokens, last_only=True):  # counts by hand within the last N = 8 text tokens
            vocab = data.tasks.vocab
            last = tokens[:, 5:-2][:, -8:]
            count = (last == vocab.terminal(self.task)).sum(1) + self.plus
            return torch.nn.functional.one_hot(count + vocab.number_offset, vocab.size).float()

    counts_b = data.diagnose(Oracle(1))  # terminal id of b
    counts_a = data.diagnose(Oracle(0))
    assert counts_b["count_ft"] == 1.0 and counts_b["count_pt"] < 0.6 and counts_b["count_pt_plus_offset"] == 0.0
    assert counts_a["count_pt"] == 1.0 and counts_a["other"] == 0.0
    planted_rule = data.diagnose(Oracle(0, plus=1))  # the shortcut: count(a) + 1
    assert planted_rule["count_pt_plus_offset"] == 1.0 and planted_rule["count_ft"] == 0.0
    assert np.isclose(sum(v for k, v in counts_a.items() if k != "count_pt"), counts_a["count_pt_plus_offset"]
                      + counts_a["count_ft"])


def test_control_reft_curves_are_computed_once_per_seed_and_replayed(monkeypatch, tmp_path):
    """The Scr.+FT and Scr. reFT curves depend on the seed, not on the prior, C_Tr or the FT LR: a second
    analysis of another prior reads them back (the same numbers, logged into its own run); another seed
    recomputes them."""
    import wrapperdist.settings.answer_reft as analysis
    from wrapperdist.memo import Memo
    from wrapperdist.models import random_like
    from wrapperdist.setting import Runtime
    from wrapperdist.sink import MemorySink
    from wrapperdist.store import Store

    memo = Memo(Store(str(tmp_path / "results")))
    runs: list[str] = []
    real = analysis.run_reft
    monkeypatch.setattr(analysis, "run_reft", lambda *a, **k: runs.append(k["desc"]) or real(*a, **k))

    def curves(cfg):
        setting = setting_for(cfg)
        torch.manual_seed(0)
        model = setting.build_model(cfg)
        control, scratch = random_like(model, 11), random_like(model, 12)
        sink = MemorySink()
        out = analysis.reft_curves(setting, cfg, model, control, scratch, setting.evaluator(cfg, ("pt_acc",)),
                                   sink, Runtime(threads=1, progress=False, memo=memo))
        return out, sink

    first, first_sink = curves(_cfg(prior="low", spurious_fraction=1.0))
    assert len(runs) == 4
    second, second_sink = curves(_cfg(prior="high", spurious_fraction=0.0))
    assert runs[4:] == ["reFT fine-tuned"]  # only the fine-tuned model's own reFT ran again
    assert list(first.values())[1:] == list(second.values())[1:]
    assert first_sink.history("reft.control.pt_acc") == second_sink.history("reft.control.pt_acc") != []
    curves(ExperimentConfig.model_validate({**TINY, "seed": 1}))
    assert len(runs) == 9  # another seed: other data, all four again


def test_control_steps_shorten_the_scr_ft_model_only():
    cfg = _cfg(control_steps=7)
    setting = setting_for(cfg)
    control = setting.control_config(cfg)
    assert control.pretrain.optim.steps == 7 and cfg.pretrain.optim.steps == TINY["pretrain"]["optim"]["steps"]
    assert node_key("pretrain", setting, cfg) == node_key("pretrain", setting, _cfg())  # the main model is shared
    assert node_key("pretrain", setting, control) != node_key("pretrain", setting, setting.control_config(_cfg()))


def test_analysis_without_scratch_and_mlp_units_runs_the_rest(tmp_path, monkeypatch):
    """The demo's cheaper analysis: no Scr. curve, no MLP-unit pruning; the paper's curves remain."""
    import wrapperdist.settings.answer_analysis as analysis
    from wrapperdist.setting import AnalysisModels, Runtime
    from wrapperdist.sink import MemorySink

    base = ExperimentConfig.model_validate(TINY)
    cfg = base.model_copy(update={"analysis": base.analysis.model_copy(update={
        "prune": base.analysis.prune.model_copy(update={"mlp_units": False}),
        "reft": base.analysis.reft.model_copy(update={"scratch": False})})})
    setting = setting_for(cfg)
    torch.manual_seed(0)
    models = AnalysisModels(setting.build_model(cfg), setting.build_model(cfg), setting.build_model(cfg))
    sink = MemorySink()
    out = analysis.analyze_answers(setting, cfg, models, sink, Runtime(threads=1, progress=False))
    logged = {k for _, m in sink.metrics for k in m}
    assert {"prune.paper.pt_acc", "prune.random.pt_acc", "reft.control.pt_acc", "reft.control_high_lr.pt_acc"} <= logged
    assert not any(k.startswith(("prune.units.", "prune.learned.", "reft.random_init.")) for k in logged)
    assert set(out.reft_final_pt_acc) == {"finetuned", "control", "control_high_lr"}


def test_fresh_probes_run_on_the_settings_generator():
    """analysis.probe.fresh_batch_size: the probes train on the generator's batches (the paper's App. D
    protocol), are scored on the pool's held-out tail, and log one value per depth and model."""
    from wrapperdist.settings.answer_analysis import _probing
    from wrapperdist.sink import MemorySink

    data = {**TINY, "analysis": {**TINY["analysis"], "probe": {"samples": 120, "steps": 20, "fresh_batch_size": 32}}}
    cfg = ExperimentConfig.model_validate(data)
    setting = setting_for(cfg)
    torch.manual_seed(0)
    model = setting.build_model(cfg)
    sink = MemorySink()
    results, floors = _probing(cfg, setting.tasks(cfg), {"pretrained": model}, sink)
    per_layer = results["pretraining target (count O_PT)"]["pretrained"]
    assert list(per_layer) == model.residual_names() and all(0.0 <= a <= 1.0 for a in per_layer.values())
    assert [v for _, v in sink.history("probe.pt.pretrained")] == list(per_layer.values())
    assert 0.0 < floors["pretraining target (count O_PT)"] <= 1.0


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5])
def test_pretraining_share_of_finetuning_batches_matches_the_config(share):
    """App. E.1's mix: a share of fine-tuning rows comes from the pretraining mixture. Under the low
    prior (b drawn once in 1000) a mixed row is almost never a count-b prompt, so the rows that are not
    count(b) estimate the share; every mixed counter row is labelled with its true count."""
    cfg = _cfg(prior="low", spurious_fraction=0.0, pretrain_share=share)
    setting = setting_for(cfg)
    data = setting.tasks(cfg)
    stream = setting.batches(cfg, "finetune", 500)
    rows = [(decoded, int(answer)) for _ in range(8) for tokens, answers in [next(stream)]
            for decoded, answer in zip(_decoded(data, np.asarray(tokens)), np.asarray(answers), strict=True)]
    mixed = [(d, a) for d, a in rows if (d[0], d[1]) != ("<counter>", "b")]
    assert abs(len(mixed) / len(rows) - share) < 0.02, (len(mixed), len(rows))  # binomial sd ≤ 0.008
    if share:
        assert {d[0] for d, _ in mixed} >= {"<counter>", "<index_of_occurrence>"}  # the mixture's families
    vocab = data.tasks.vocab
    for (family, operand, text), answer in mixed:
        if family == "<counter>":
            assert vocab.decode(answer) == str(text[-8:].count(operand))  # count_window 8
    plain = setting.batches(_cfg(prior="low", spurious_fraction=0.0), "finetune", 500)
    if share == 0:  # no share: the stream is exactly the one before the option existed
        assert np.array_equal(np.asarray(next(plain)[0]), np.asarray(next(setting.batches(cfg, "finetune", 500))[0]))
