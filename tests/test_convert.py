"""Tests of `sdtgen convert`: diffusers' DiT and original DiT checkpoints into SDTDiT, and warm starts."""

import argparse
import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel

from sdtgen.cli import main
from sdtgen.convert import ConversionError, convert_diffusers_dit, convert_original_dit
from sdtgen.models.dit import SDTDiT
from sdtgen.models.embeddings import sincos_pos_embed_2d
from stand_ins import NUM_CLASSES, original_state_dict, tiny_diffusers_dit


def make_inputs(channels: int, size: int, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents, spread-out timesteps and labels including the null class."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, size, size, generator=generator)
    t = torch.tensor([3, 480, 997][:batch])
    y = torch.tensor([0, 7, NUM_CLASSES][:batch])
    return x, t, y


# ------------------------------------------------------------------ diffusers' DiT


@pytest.fixture(scope="module")
def diffusers_dit() -> DiTTransformer2DModel:
    return tiny_diffusers_dit()


@pytest.mark.parametrize("layout", ["model", "pipeline", "hub-2023"])
def test_diffusers_folder_converts_exactly(diffusers_dit, tmp_path, layout):
    source = tmp_path / "source"
    if layout == "pipeline":
        diffusers_dit.save_pretrained(source / "transformer")
        (source / "model_index.json").write_text(
            json.dumps({"_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"]})
        )
    else:
        diffusers_dit.save_pretrained(source)
    if layout == "hub-2023":
        # facebook/DiT-XL-2-256 predates DiTTransformer2DModel: its config names the generic class and no norm settings.
        config = json.loads((source / "config.json").read_text())
        config["_class_name"] = "Transformer2DModel"
        del config["norm_type"], config["norm_eps"]
        (source / "config.json").write_text(json.dumps(config))
    assert main(["convert", "--from", "diffusers", str(source), "--out", str(tmp_path / "out")]) == 0

    converted = SDTDiT.from_pretrained(tmp_path / "out")
    assert converted.config.timestep_freq_shift == 1 and converted.config.mlp_norm_eps == diffusers_dit.config.norm_eps
    x, t, y = make_inputs(4, 8)
    with torch.no_grad():
        expected = diffusers_dit(x, timestep=t, class_labels=y).sample
        assert (converted(x, t, y) - expected).abs().max() <= 1e-5
        # The saved folder holds exactly what the library converts in memory.
        assert torch.equal(converted(x, t, y), convert_diffusers_dit(diffusers_dit)(x, t, y))


def test_diffusers_per_block_embedders_must_agree():
    with pytest.raises(ConversionError, match="shares a single embedder"):
        convert_diffusers_dit(tiny_diffusers_dit(tie_embedders=False))


# ------------------------------------------------------------------ original DiT


def reference_dit(
    state: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, heads: int
) -> torch.Tensor:
    """The original DiT forward (eval mode), restated with plain tensor ops on its state dict."""

    def linear(z, name):
        return F.linear(z, state[f"{name}.weight"], state[f"{name}.bias"])

    patch = state["x_embedder.proj.weight"].shape[-1]
    tokens = F.conv2d(x, state["x_embedder.proj.weight"], state["x_embedder.proj.bias"], stride=patch)
    batch, width, rows, cols = tokens.shape
    tokens = tokens.flatten(2).transpose(1, 2) + state["pos_embed"]
    angles = t.float()[:, None] * torch.exp(-math.log(10000.0) * torch.arange(128) / 128)
    t_emb = linear(
        F.silu(linear(torch.cat([angles.cos(), angles.sin()], dim=1), "t_embedder.mlp.0")), "t_embedder.mlp.2"
    )
    c = F.silu(t_emb + state["y_embedder.embedding_table.weight"][y])

    def norm(z):
        return F.layer_norm(z, (width,), eps=1e-6)

    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    for i in range(depth):
        shift1, scale1, gate1, shift2, scale2, gate2 = linear(c, f"blocks.{i}.adaLN_modulation.1")[:, None].chunk(
            6, dim=-1
        )
        q, k, v = (
            linear(norm(tokens) * (1 + scale1) + shift1, f"blocks.{i}.attn.qkv").unflatten(-1, (3, heads, -1)).unbind(2)
        )
        weights = (torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(q.shape[-1])).softmax(dim=-1)
        attended = torch.einsum("bhnm,bmhd->bnhd", weights, v).flatten(2)
        tokens = tokens + gate1 * linear(attended, f"blocks.{i}.attn.proj")
        hidden = F.gelu(linear(norm(tokens) * (1 + scale2) + shift2, f"blocks.{i}.mlp.fc1"), approximate="tanh")
        tokens = tokens + gate2 * linear(hidden, f"blocks.{i}.mlp.fc2")
    shift, scale = linear(c, "final_layer.adaLN_modulation.1")[:, None].chunk(2, dim=-1)
    out = linear(norm(tokens) * (1 + scale) + shift, "final_layer.linear")
    out = out.reshape(batch, rows, cols, patch, patch, -1).permute(0, 5, 1, 3, 2, 4)
    return out.reshape(batch, -1, rows * patch, cols * patch)


def test_original_checkpoint_converts_exactly(tmp_path):
    # Width 384 is DiT-S: its 6 heads come from DiT's size table.
    state = original_state_dict(depth=2, width=384, patch=2, grid=4)
    torch.save(state, tmp_path / "dit.pt")
    assert main(["convert", "--from", "dit", str(tmp_path / "dit.pt"), "--out", str(tmp_path / "out")]) == 0

    converted = SDTDiT.from_pretrained(tmp_path / "out")
    assert (converted.config.num_heads, converted.config.num_classes, converted.config.learn_sigma) == (
        6,
        NUM_CLASSES,
        True,
    )
    x, t, y = make_inputs(4, 8)
    with torch.no_grad():
        assert (converted(x, t, y) - reference_dit(state, x, t, y, heads=6)).abs().max() <= 1e-5


def test_training_checkpoint_uses_ema_weights(tmp_path, capsys):
    ema = original_state_dict(depth=1, width=32, patch=2, grid=4, seed=1)
    checkpoint = {
        "model": original_state_dict(1, 32, 2, 4, seed=2),
        "ema": ema,
        "opt": {"state": {}},
        "args": argparse.Namespace(model="DiT-S/2"),
    }
    torch.save(checkpoint, tmp_path / "0100000.pt")
    main(["convert", "--from", "dit", str(tmp_path / "0100000.pt"), "--num-heads", "2", "--out", str(tmp_path / "out")])

    assert "'ema'" in capsys.readouterr().err
    x, t, y = make_inputs(4, 8)
    with torch.no_grad():
        assert (
            SDTDiT.from_pretrained(tmp_path / "out")(x, t, y) - reference_dit(ema, x, t, y, heads=2)
        ).abs().max() <= 1e-5


def test_input_size_change_recomputes_sincos_positions(tmp_path):
    state = original_state_dict(depth=1, width=32, patch=2, grid=4)
    state["pos_embed"] = sincos_pos_embed_2d(32, 4)[None]
    torch.save(state, tmp_path / "dit.pt")
    model = convert_original_dit(tmp_path / "dit.pt", num_heads=2, input_size=16)
    assert torch.equal(model.pos_embed[0], sincos_pos_embed_2d(32, 8))
    assert model(*make_inputs(4, 16)).shape == (3, 8, 16, 16)


# ------------------------------------------------------------------ warm starts


@pytest.fixture(scope="module")
def warm_start_source(tmp_path_factory):
    """A DiT-S-width checkpoint on an 8x8 token grid, its vanilla conversion's output, and inputs."""
    path = tmp_path_factory.mktemp("warm") / "dit-s.pt"
    torch.save(original_state_dict(depth=2, width=384, patch=2, grid=8), path)
    inputs = make_inputs(4, 16)
    with torch.no_grad():
        return path, convert_original_dit(path)(*inputs), inputs


@pytest.mark.parametrize("attention", ["sdt", "learned-fixed", "sdt-decomposed"])
def test_warm_start_is_close_and_its_decay_trains(warm_start_source, tmp_path, attention, caplog):
    path, plain, inputs = warm_start_source
    main(["convert", "--from", "dit", str(path), "--attention", attention, "--out", str(tmp_path / "out")])
    model = SDTDiT.from_pretrained(tmp_path / "out")
    with torch.no_grad():
        out = model(*inputs)
        assert torch.equal(out, convert_original_dit(path, attention=attention)(*inputs))
    if attention == "sdt-decomposed":
        # Row-then-column attention is not full attention, whatever the decay: no warm start, and it says so.
        assert "differs from the pretrained DiT" in caplog.text
    else:
        assert (out - plain).abs().max() <= 1e-3

    model.train()
    model(*inputs).square().mean().backward()
    names = ("decay_logit",) if attention == "learned-fixed" else ("gate.weight", "gate.bias", "alpha")
    for block in model.blocks:
        for name in names:
            grad = block.attn.get_parameter(name).grad
            assert grad is not None and grad.reshape(len(grad), -1).ne(0).any(dim=1).all(), (
                f"{name}: a head gets no gradient"
            )


def test_lepe_keeps_the_warm_start_exact(warm_start_source):
    path, plain, inputs = warm_start_source
    with torch.no_grad():
        assert (convert_original_dit(path, lepe=True)(*inputs) - plain).abs().max() <= 1e-6


@pytest.mark.parametrize("overrides", [{"attention": "fixed"}, {"rope": True}, {"qk_norm": True}])
def test_function_changing_options_warn(warm_start_source, overrides, caplog):
    with caplog.at_level(logging.WARNING, logger="sdtgen"):
        convert_original_dit(warm_start_source[0], **overrides)
    assert any(record.levelno == logging.WARNING and "output" in record.getMessage() for record in caplog.records)


# ------------------------------------------------------------------ errors


class NotATensor:
    """Pickled inside a checkpoint; torch.load(weights_only=True) must refuse it."""


def write_bad_sources(tmp_path) -> dict[str, list[str]]:
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    torch.save({"ema": {"x": torch.zeros(1)}, "extra": NotATensor()}, tmp_path / "unsafe.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    convert = ["convert", "--out", str(tmp_path / "out")]
    return {
        "missing file": [*convert, "--from", "dit", str(tmp_path / "missing.pt")],
        "not a DiT": [*convert, "--from", "dit", str(tmp_path / "other.pt")],
        "refused pickle": [*convert, "--from", "dit", str(tmp_path / "unsafe.pt")],
        "not a checkpoint": [*convert, "--from", "dit", str(tmp_path / "text.pt")],
        "missing folder": [*convert, "--from", "diffusers", str(tmp_path / "nowhere")],
        "file for diffusers": [*convert, "--from", "diffusers", str(tmp_path / "other.pt")],
        "unknown variant": [*convert, "--from", "dit", str(tmp_path / "other.pt"), "--attention", "linear"],
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "not a DiT",
        "refused pickle",
        "not a checkpoint",
        "missing folder",
        "file for diffusers",
        "unknown variant",
    ],
)
def test_bad_sources_give_one_error_line(tmp_path, capsys, case):
    with pytest.raises(SystemExit) as exit_info:
        main(write_bad_sources(tmp_path)[case])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("sdtgen convert: error: "), err


def test_help_lists_subcommands_and_explains_convert(capsys):
    for argv, expected in ((["--help"], "convert"), (["convert", "--help"], "DiT-XL-2-256x256.pt")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0 and expected in capsys.readouterr().out
