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
    # a model that knows the text but not the answer: next-token loss changes when only text targets change
    full = next_token_loss(model, tokens, answers)
    shuffled = tokens.clone()
    shuffled[:, 5:-2] = shuffled[:, 5:-2].flip(1)
    assert not torch.isclose(full, next_token_loss(model, shuffled, answers))
    assert torch.isclose(loss_on_batch(model, tokens, answers), loss_on_batch(model, tokens, answers))


@pytest.mark.parametrize("reft,ok", [({"lr": 1e-4}, True), ({"lr": 1e-3}, False), ({"lr": 3e-3}, False),
                                     ({"lr_factor": 0.1}, True), ({"lr": 1e-3, "below_finetune": False}, True)])
def test_reft_lr_must_be_below_the_finetuning_lr(reft, ok):
    data = {**TINY, "analysis": {**TINY["analysis"], "reft": {**TINY["analysis"]["reft"], **reft}}}
    if ok:
        ExperimentConfig.model_validate(data)
    else:
        with pytest.raises(ValueError, match="must be below the fine-tuning LR"):
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

        def forward(self, tokens, last_only=True):
            answers = data.tasks.labelled(data.tasks.texts_of(tokens.numpy()), self.task)[1]
            return torch.nn.functional.one_hot(torch.from_numpy(answers), data.tasks.vocab.size).float()

    counts_b = data.diagnose(Oracle(data.target))
    counts_a = data.diagnose(Oracle(data.capability))
    assert counts_b["count_ft"] == 1.0 and counts_b["count_pt"] < 0.6 and counts_b["count_pt_plus_offset"] < 0.6
    assert counts_a["count_pt"] == 1.0 and counts_a["other"] == 0.0
    assert np.isclose(sum(v for k, v in counts_a.items() if k != "count_pt"), counts_a["count_pt_plus_offset"]
                      + counts_a["count_ft"])
