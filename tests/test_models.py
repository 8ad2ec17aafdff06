import pytest
import torch

from common.activations import NAMES, TeLU, make_activation
from common.models import build_model


def test_eleven_activations_with_lower_case_names():
    assert NAMES == ("relu", "rrelu", "softplus", "gelu", "selu", "celu", "silu", "hardsilu",
                     "hardtanh", "telu", "mish")


@pytest.mark.parametrize("name", NAMES)
def test_every_activation_builds_a_model_with_finite_input_gradients(name):
    torch.manual_seed(0)
    model = build_model(name, width=8)
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (4, 10)
    out.logsumexp(1).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_activation_is_injected_everywhere(name):
    model = build_model(name, width=8)
    expected = type(make_activation(name))
    found = [m for m in model.modules() if isinstance(m, expected)]
    assert len(found) == 1 + 8 * 2  # the stem plus two per basic block


def test_unknown_activation_lists_valid_names():
    with pytest.raises(ValueError, match="relu, rrelu, softplus.*telu, mish"):
        make_activation("swish")


def test_telu_matches_definition_and_survives_large_inputs():
    x = torch.tensor([-5.0, -1.0, 0.0, 1.0, 3.0], dtype=torch.float64)
    assert torch.allclose(TeLU()(x), x * torch.tanh(torch.exp(x)))
    big = torch.tensor([50.0, 100.0, 1e4, 3e38], requires_grad=True)
    y = TeLU()(big)
    y.sum().backward()
    assert torch.equal(y.detach(), big.detach())  # tanh(exp(x)) == 1 for large x
    assert torch.isfinite(big.grad).all()


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_standard_width_has_the_resnet18_parameter_count():
    assert abs(count_parameters(build_model("relu", 64)) - 11.17e6) <= 0.05e6


def test_no_downsample_variant_keeps_resolution_and_parameters():
    standard, literal = build_model("relu", 8), build_model("relu", 8, "no-downsample")
    assert count_parameters(standard) == count_parameters(literal)
    feats = {}
    literal.stages[3].register_forward_hook(lambda m, i, o: feats.update(out=o.shape))
    literal(torch.rand(2, 3, 32, 32))
    assert feats["out"][-2:] == (32, 32)
    with pytest.raises(ValueError, match="standard, no-downsample"):
        build_model("relu", 8, "tiny")


def _stem_input(model, x):
    """What the first convolution sees when the model's forward runs on x."""
    seen = []
    handle = model.stem[0].register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def test_forward_normalizes_with_the_cifar10_statistics_and_keeps_them_out_of_the_weights():
    model = build_model("relu", 8).eval()
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    x = torch.rand(2, 3, 32, 32)  # inputs live in [0, 1]
    assert torch.allclose(_stem_input(model, x), (x - mean) / std, atol=1e-6)
    assert torch.allclose(_stem_input(model, mean.expand(1, 3, 32, 32)),
                          torch.zeros(1, 3, 32, 32), atol=1e-6)


def test_real_images_reach_the_stem_standardized(cifar):
    stem = _stem_input(build_model("relu", 8).eval(), cifar.train_x[:200].float() / 255)
    per_channel = stem.transpose(0, 1).flatten(1)
    assert per_channel.mean(1).abs().max() < 0.05
    assert torch.allclose(per_channel.std(1), torch.ones(3), atol=0.05)
