"""The PCFG protocol of the paper beyond the data: the Scr.+FT control, next-token pretraining, the
reFT learning-rate rule, and what the analysis diagnoses."""

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


def test_answer_breakdown_tells_a_wrapper_from_a_counter():
    """An oracle that answers count(b) on count-a prompts is all `count_ft`; one that answers count(a)
    is all `count_pt`."""
    cfg = _cfg()
    data = setting_for(cfg).tasks(cfg)

    class Oracle(torch.nn.Module):
        def __init__(self, task):
            super().__init__()
            self.task = task

        def forward(self, tokens, last_only=True):  # counts by hand within the last N = 8 text tokens
            vocab = data.tasks.vocab
            last = tokens[:, 5:-2][:, -8:]
            count = (last == vocab.terminal(self.task)).sum(1)
            return torch.nn.functional.one_hot(count + vocab.number_offset, vocab.size).float()

    counts_b = data.diagnose(Oracle(1))  # terminal id of b
    counts_a = data.diagnose(Oracle(0))
    assert counts_b["count_ft"] == 1.0 and counts_b["count_pt"] < 0.6 and counts_b["count_pt_plus_offset"] < 0.6
    assert counts_a["count_pt"] == 1.0 and counts_a["other"] == 0.0
    assert np.isclose(sum(v for k, v in counts_a.items() if k != "count_pt"), counts_a["count_pt_plus_offset"]
                      + counts_a["count_ft"])


def test_control_reft_curves_are_computed_once_per_seed_and_replayed(monkeypatch, tmp_path):
    """The Scr.+FT and Scr. reFT curves depend on the seed, not on the prior, C_Tr or the FT LR: a second
    analysis of another prior reads them back (the same numbers, logged into its own run); another seed
    recomputes them."""
    import wrapperdist.settings.answer_analysis as analysis
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
        out = analysis._reft_curves(setting, cfg, model, control, scratch, setting.evaluator(cfg, ("pt_acc",)),
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
