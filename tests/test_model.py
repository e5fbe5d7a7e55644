"""SDTDiT: DiT's sizes, the variants at initialisation, save/load, checkpointing and input errors."""

import pytest
import torch

from sdtgen import SDTDiT
from sdtgen.models.attention import ATTENTION_VARIANTS
from sdtgen.models.backends import resolve_backend
from sdtgen.models.embeddings import sincos_pos_embed_2d

# DiT's published parameter counts (models.py / the paper's table), ImageNet 256, learned sigma.
DIT_PARAMS = {"S/2": 32_963_360, "B/2": 130_512_416, "L/2": 458_102_816, "XL/2": 675_129_632}


def tiny(attention="sdt", **overrides) -> SDTDiT:
    kwargs = dict(input_size=8, in_channels=4, num_classes=10, depth=2, attention=attention, **overrides)
    return SDTDiT.from_preset("S/2", **kwargs)


def randomize(model: SDTDiT, seed: int = 0) -> SDTDiT:
    """Give every trainable non-decay weight a non-zero value (adaLN-Zero starts the model at 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and not any(key in name for key in ("gate", "alpha", "decay_logit", "lepe")):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model


def inputs(batch=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 4, 8, 8, generator=generator),
        torch.tensor([0, 500, 999])[:batch],
        torch.tensor([1, 9, 10])[:batch],
    )


@pytest.mark.parametrize("preset,expected", DIT_PARAMS.items())
def test_vanilla_presets_have_dit_parameter_counts(preset, expected):
    with torch.device("meta"):
        model = SDTDiT.from_preset(preset, attention="vanilla")
    assert sum(p.numel() for p in model.parameters()) == expected


def test_sdt_adds_only_the_gate_and_alpha():
    with torch.device("meta"):
        sdt = SDTDiT.from_preset("S/2", attention="sdt")
    extra = sum(p.numel() for p in sdt.parameters()) - DIT_PARAMS["S/2"]
    assert extra == 12 * (384 * 6 + 6 + 6)  # per block: gate Linear(C, H) and alpha (H,)


def test_model_starts_at_zero_output_like_dit():
    x, t, y = inputs()
    assert torch.equal(tiny()(x, t, y), torch.zeros(3, 8, 8, 8))


def test_sdt_at_initialisation_equals_fixed():
    fixed = randomize(tiny("fixed")).eval()
    sdt = tiny("sdt").eval()
    missing, unexpected = sdt.load_state_dict(fixed.state_dict(), strict=False)
    assert unexpected == [] and all(("gate" in k or "alpha" in k) for k in missing)
    x, t, y = inputs()
    out_fixed, out_sdt = fixed(x, t, y), sdt(x, t, y)
    assert out_fixed.abs().mean() > 1e-3
    torch.testing.assert_close(out_sdt, out_fixed, rtol=1e-6, atol=1e-6)
    assert (out_sdt - randomize(tiny("vanilla")).eval()(x, t, y)).abs().max() > 1e-4  # the decay matters


def test_position_embedding_is_dit_sincos():
    emb = sincos_pos_embed_2d(8, 2)  # tokens (0,0), (0,1), (1,0), (1,1); omega = [1, 0.01]

    def col_half(c):
        return [
            torch.sin(torch.tensor(c * 1.0)),
            torch.sin(torch.tensor(c * 0.01)),
            torch.cos(torch.tensor(c * 1.0)),
            torch.cos(torch.tensor(c * 0.01)),
        ]

    expected = torch.tensor([[*col_half(c), *col_half(r)] for r in range(2) for c in range(2)])
    torch.testing.assert_close(emb, expected)


@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_save_load_round_trip_is_exact(tmp_path, attention):
    model = randomize(tiny(attention, rope=attention == "sdt", lepe=attention == "sdt"))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = SDTDiT.from_pretrained(tmp_path)
    assert loaded.config.attention == attention
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    x, t, y = inputs()
    model.eval(), loaded.eval()
    assert torch.equal(model(x, t, y), loaded(x, t, y))


def test_gradient_checkpointing_gives_the_same_gradients():
    x, t, y = inputs()
    grads = []
    for checkpointing in (False, True):
        model = randomize(tiny()).eval()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(x, t, y).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


def test_model_is_deterministic_in_training_mode():
    model = randomize(tiny()).train()
    x, t, y = inputs()
    assert torch.equal(model(x, t, y), model(x, t, y))  # label dropout belongs to the trainer


def test_auto_backend_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("auto", "vanilla", 1024, cpu) == resolve_backend("auto", "vanilla", 256, cuda) == "sdpa"
    assert resolve_backend("auto", "sdt", 256, cpu) == "sdpa" and resolve_backend("auto", "sdt", 1024, cpu) == "folded"
    assert (
        resolve_backend("auto", "learned-fixed", 64, cpu) == "sdpa"
        and resolve_backend("auto", "learned-fixed", 256, cpu) == "folded"
    )
    assert (
        resolve_backend("auto", "fixed", 4096, cpu)
        == resolve_backend("auto", "sdt", 1024, cpu, training=False)
        == "sdpa"
    )
    assert resolve_backend("auto", "sdt-decomposed", 4096, cpu) == "sdpa"
    assert resolve_backend("auto", "sdt", 256, cuda) == "flex"
    # Training in bf16 on a CPU: the math path for every variant up to 256 tokens; sampling keeps SDPA.
    bf16 = torch.bfloat16
    assert {
        resolve_backend("auto", variant, tokens, cpu, dtype=bf16)
        for variant in ATTENTION_VARIANTS
        for tokens in (64, 256)
    } == {"math"}
    assert resolve_backend("auto", "sdt", 1024, cpu, dtype=bf16) == "folded"
    assert resolve_backend("auto", "vanilla", 1024, cpu, dtype=bf16) == "sdpa"
    assert resolve_backend("auto", "sdt", 64, cpu, training=False, dtype=bf16) == "sdpa"
    assert resolve_backend("auto", "sdt", 64, cuda, dtype=bf16) == "flex"
    assert resolve_backend("math", "sdt", 256, cuda) == "math"


def test_bad_inputs_give_clear_errors():
    model = tiny()
    x, t, y = inputs()
    with pytest.raises(ValueError, match=r"Expected input of shape \(batch, 4, 8, 8\), got \(3, 3, 8, 8\)"):
        model(x[:, :3], t, y)
    with pytest.raises(ValueError, match=r"Expected input of shape"):
        model(torch.randn(3, 4, 16, 16), t, y)
    with pytest.raises(
        ValueError, match=r"Class label 11 is out of range: this model accepts 0\.\.10 \(10 is the null class"
    ):
        model(x, t, torch.tensor([1, 11, 2]))
    with pytest.raises(ValueError, match="Class label -1"):
        model(x, t, torch.tensor([1, -1, 2]))
    with pytest.raises(ValueError, match="integer class labels"):
        model(x, t, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="Expected 3 timesteps"):
        model(x, torch.tensor([1, 2]), y)
    with pytest.raises(ValueError, match="Unknown preset 'M/2'"):
        SDTDiT.from_preset("M/2")
    assert model(x, torch.tensor(7), y).shape == (3, 8, 8, 8)  # a scalar timestep broadcasts
