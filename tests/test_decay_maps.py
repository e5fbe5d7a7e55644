"""Decay maps: the numbers drawn are the model's own decay, and the picture is written."""

import math

import pytest
import torch

from sdtgen import SDTDiT
from sdtgen.decay_maps import collect_log_decay, render_decay_maps


def test_log_decay_of_an_initial_sdt_model_is_rmt_schedule_and_renders(tmp_path):
    model = SDTDiT.from_preset(
        "S/2", attention="sdt", input_size=8, num_classes=10, depth=2, hidden_size=64, num_heads=2
    ).eval()
    lams = collect_log_decay(model, torch.randn(1, 4, 8, 8), timestep=500, label=3)
    assert len(lams) == 2 and lams[0].shape == (2, 16)
    gammas = [1 - 2 ** (-2 - 4 * h / 2) for h in range(2)]
    torch.testing.assert_close(lams[0], torch.tensor([[math.log(g)] * 16 for g in gammas]), rtol=1e-5, atol=1e-6)
    path = render_decay_maps(torch.zeros(4, 8, 8)[:1], lams[0], (4, 4), (1, 2), tmp_path / "maps.png")
    assert path.stat().st_size > 1000


def test_vanilla_models_have_no_decay_to_show():
    model = SDTDiT.from_preset(
        "S/2", attention="vanilla", input_size=8, num_classes=10, depth=1, hidden_size=64, num_heads=2
    )
    with pytest.raises(ValueError, match="no spatial decay"):
        collect_log_decay(model, torch.randn(1, 4, 8, 8), timestep=1, label=0)


def test_inspect_command_writes_the_picture_and_rejects_bad_tokens(tmp_path, capsys):
    from sdtgen.cli import main
    from tiny_runs import random_model, write_run

    run = write_run(tmp_path / "run", random_model("flow"), objective="flow")
    out = tmp_path / "decay.png"
    assert main(["inspect", "--ckpt", str(run), "--class", "giraffe", "--out", str(out), "--token", "2", "3"]) == 0
    assert out.stat().st_size > 1000
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "--ckpt", str(run), "--class", "giraffe", "--out", str(out), "--token", "9", "0"])
    assert exit_info.value.code == 2
    assert "outside the 4x4 token grid" in capsys.readouterr().err
