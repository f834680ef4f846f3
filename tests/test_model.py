"""Hook points: capture by name, masks remove a unit's contribution exactly, hooks don't change outputs."""

import pytest
import torch

from wrapperdist.models import GPT, GPTShape

SHAPE = GPTShape(vocab_size=20, seq_len=10, n_layer=2, n_head=2, d_model=16, d_mlp=32)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(SHAPE).eval()


@pytest.fixture
def tokens():
    return torch.randint(0, SHAPE.vocab_size, (4, SHAPE.seq_len), generator=torch.Generator().manual_seed(1))


def test_hook_names(model):
    names = set(model.hook_points())
    for i in range(SHAPE.n_layer):
        assert {f"blocks.{i}.resid_post", f"blocks.{i}.attn.pattern", f"blocks.{i}.attn.heads",
                f"blocks.{i}.mlp.hidden"} <= names
    assert "embed" in names


def test_capture_shapes_and_no_effect_on_output(model, tokens):
    plain = model(tokens)
    with model.capture() as cache:
        hooked = model(tokens)
    torch.testing.assert_close(plain, hooked, rtol=1e-5, atol=1e-5)  # explicit attention == SDPA
    assert cache["blocks.1.resid_post"].shape == (4, SHAPE.seq_len, SHAPE.d_model)
    assert cache["blocks.0.mlp.hidden"].shape == (4, SHAPE.seq_len, SHAPE.d_mlp)
    pattern = cache["blocks.0.attn.pattern"]
    assert pattern.shape == (4, SHAPE.n_head, SHAPE.seq_len, SHAPE.seq_len)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(4, SHAPE.n_head, SHAPE.seq_len))
    assert torch.triu(pattern, diagonal=1).abs().max() == 0  # causal
    assert all(p.cache is None for p in model.hook_points().values())  # released after the block


def test_capture_unknown_name(model):
    with pytest.raises(KeyError, match="unknown hook points"), model.capture(["blocks.9.mlp.hidden"]):
        pass


def test_last_position_equals_full_forward(model, tokens):
    torch.testing.assert_close(model(tokens)[:, -1], model(tokens, last_only=True))


def test_zero_mask_removes_mlp_unit_exactly(model, tokens):
    """Masking unit j equals deleting its output weights: the mask really removes the contribution."""
    unit = 5
    mask = torch.ones(SHAPE.d_mlp)
    mask[unit] = 0.0
    model.set_mask("blocks.0.mlp.hidden", mask)
    masked = model(tokens)
    with model.capture(["blocks.0.mlp.hidden"]) as cache:
        model(tokens)
    assert cache["blocks.0.mlp.hidden"][..., unit].abs().max() == 0
    model.clear_masks()
    edited = GPT(SHAPE).eval()
    edited.load_state_dict(model.state_dict())
    with torch.no_grad():
        edited.blocks[0].mlp.out.weight[:, unit] = 0.0
    torch.testing.assert_close(masked, edited(tokens))
    assert not torch.allclose(masked, model(tokens))  # and it did change something


def test_head_mask_matches_zeroed_projection(model, tokens):
    head, d_head = 1, SHAPE.d_model // SHAPE.n_head
    mask = torch.ones(SHAPE.n_head, 1)
    mask[head] = 0.0
    model.set_mask("blocks.1.attn.heads", mask)
    masked = model(tokens)
    model.clear_masks()
    edited = GPT(SHAPE).eval()
    edited.load_state_dict(model.state_dict())
    with torch.no_grad():
        edited.blocks[1].attn.proj.weight[:, head * d_head : (head + 1) * d_head] = 0.0
    torch.testing.assert_close(masked, edited(tokens))


def test_gradient_flows_to_mask(model, tokens):
    """Pruning scores come from d loss / d mask: the hook must keep the mask in the graph."""
    mask = torch.ones(SHAPE.d_mlp, requires_grad=True)
    model.set_mask("blocks.1.mlp.hidden", mask)
    model(tokens, last_only=True).sum().backward()
    assert mask.grad is not None and mask.grad.abs().sum() > 0
