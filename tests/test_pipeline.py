"""SDTPipeline: diffusers-style use, save/load round trip, `sdtgen export`, and equality with DiTPipeline."""

import json

import numpy as np
import pytest
import torch
import yaml
from diffusers import AutoencoderKL, DiTPipeline

from sdtgen import SDTPipeline
from sdtgen.cli import main
from sdtgen.config import SampleConfig
from sdtgen.convert import convert_diffusers_dit
from sdtgen.diffusion.sampling import DEFAULT_GUIDANCE, Guidance, default_guidance, make_scheduler, sample_generators
from sdtgen.runs import find_source, load_pipeline
from sdtgen.vae import load_vae
from stand_ins import tiny_diffusers_dit
from tiny_runs import random_model, write_run


def generators(n: int, seed: int = 0) -> list[torch.Generator]:
    return sample_generators(seed, range(n))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("pipeline") / "run", random_model("flow"), objective="flow")


def test_save_and_load_round_trip(run, tmp_path):
    pipe = load_pipeline(find_source(run))
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == ["sdtgen_pipeline", "SDTPipeline"] and index["id2label"]["4"] == "dog"
    assert (
        index["transformer"] == ["sdtgen.models.dit", "SDTDiT"]
        and index["scheduler"][1] == "FlowMatchDPMSolverMultistepScheduler"
    )
    loaded = SDTPipeline.from_pretrained(tmp_path / "pipe")
    assert (
        loaded.objective == "flow"
        and loaded.class_names == pipe.class_names
        and loaded.get_label_ids(["dog", 7]) == [4, 7]
    )
    kwargs = dict(class_labels=["dog", 3], num_inference_steps=3, guidance_scale=2.0, output_type="np")
    before, after = pipe(generator=generators(2), **kwargs).images, loaded(generator=generators(2), **kwargs).images
    assert before.shape == (2, 32, 32, 1) and np.array_equal(before, after)
    loaded.use_sampler("heun")
    pil = loaded(class_labels=[4], num_inference_steps=2, generator=torch.manual_seed(0)).images
    assert (
        pil[0].size == (32, 32)
        and pil[0].mode == "L"
        and loaded.scheduler.__class__.__name__ == "FlowMatchHeunDiscreteScheduler"
    )


def test_pixel_space_pipeline_has_no_vae(tmp_path):
    pipe = SDTPipeline(
        random_model("ddpm", in_channels=1, input_size=32), make_scheduler("ddpm", "ddpm", learn_sigma=True)
    )
    pipe.save_pretrained(tmp_path / "pixels")
    loaded = SDTPipeline.from_pretrained(tmp_path / "pixels")
    assert loaded.vae is None and loaded.class_names is None
    images = loaded(
        class_labels=[0, 9], num_inference_steps=2, guidance_scale=1.5, generator=generators(2), output_type="pt"
    ).images
    assert images.shape == (2, 1, 32, 32) and 0 <= images.min() and images.max() <= 1


def test_export_writes_a_pipeline_that_samples_like_the_run(run, tmp_path, capsys):
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "pipe"), "--sampler", "heun"]) == 0
    assert "Saved SDTPipeline (flow, FlowMatchHeunDiscreteScheduler" in capsys.readouterr().out
    exported = SDTPipeline.from_pretrained(tmp_path / "pipe")
    direct = load_pipeline(find_source(run), sampler="heun")
    kwargs = dict(class_labels=[1, 2], num_inference_steps=2, output_type="np")
    assert np.array_equal(
        exported(generator=generators(2), **kwargs).images, direct(generator=generators(2), **kwargs).images
    )


def test_export_loads_with_diffusers_generic_loader_and_has_a_model_card(run, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline
    from diffusers.utils import dynamic_modules_utils

    monkeypatch.setattr(
        dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules")
    )  # diffusers copies code there
    # From before the rename, when metrics.json called the guidance scale cfg.
    provenance = {"steps": 3, "cfg": 1.5}
    (run / "metrics.json").write_text(json.dumps({"fid": 12.5, "class_accuracy": 0.9, "provenance": provenance}))
    try:
        assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "pipe"), "--license", "mit"]) == 0
    finally:
        (run / "metrics.json").unlink()
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    generic = DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
    assert type(generic) is SDTPipeline
    kwargs = dict(class_labels=["dog", 3], num_inference_steps=2, output_type="np")
    images = generic(generator=generators(2), **kwargs).images
    direct = SDTPipeline.from_pretrained(tmp_path / "pipe")(generator=generators(2), **kwargs).images
    assert images.shape == (2, 32, 32, 1) and np.array_equal(images, direct)
    card = (tmp_path / "pipe" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "diffusers" and front["license"] == "mit" and "sdtgen" in front["tags"]
    assert "4 dog" in card and "| objective | flow |" in card and "| FID | 12.5 |" in card and "90.0%" in card
    assert "(steps 3, guidance_scale 1.5)" in card
    assert "trust_remote_code=True" in card


def test_export_refuses_to_write_into_another_folder(run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    for out, what in ((run, "the --ckpt folder"), (tmp_path / "taken", "a folder of other files")):
        with pytest.raises(SystemExit) as exit_info:
            main(["export", "--ckpt", str(run), "--out", str(out)])
        assert exit_info.value.code == 2 and what in capsys.readouterr().err
    assert not (run / "model_index.json").exists() and [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_default_guidance_is_defined_once(run):
    """The pipeline and Guidance share DEFAULT_GUIDANCE (a run's own sample.guidance_scale, the built-in recipe's 2.5 at noise
    levels up to 0.8, is what commands on a run use); a model without a null class is unguided."""
    assert Guidance() == Guidance(DEFAULT_GUIDANCE, None, (0.0, 1.0))
    assert SampleConfig().guidance() == Guidance(2.5, None, (0.0, 0.8))
    pipe = load_pipeline(find_source(run))
    kwargs = dict(class_labels=[1, 2], num_inference_steps=2, output_type="pt")
    default = pipe(generator=generators(2), **kwargs).images
    assert torch.equal(default, pipe(generator=generators(2), guidance_scale=DEFAULT_GUIDANCE, **kwargs).images)
    assert not torch.equal(default, pipe(generator=generators(2), guidance_scale=1.0, **kwargs).images)
    unguided = SDTPipeline(random_model("flow", class_dropout_prob=0.0), pipe.scheduler, pipe.vae)
    assert default_guidance(unguided.transformer.config, preferred=3.0) == 1.0
    assert torch.equal(
        unguided(generator=generators(2), **kwargs).images,
        unguided(generator=generators(2), guidance_scale=1.0, **kwargs).images,
    )


def test_from_model_refuses_a_vae_scaled_unlike_its_config():
    vae = load_vae("builtin")
    SDTPipeline.from_model(random_model("flow"), vae, objective="flow")
    with pytest.raises(ValueError, match="its config"):
        SDTPipeline.from_model(random_model("flow"), load_vae("builtin", scale=vae.scale * 2), objective="flow")


def test_bad_pipeline_arguments_are_clear(run):
    pipe = load_pipeline(find_source(run))
    with pytest.raises(ValueError, match="did you mean 'zebra'"):
        pipe(class_labels=["zebar"])
    with pytest.raises(ValueError, match="one per sample"):
        pipe(class_labels=[1, 2], generator=generators(3))
    with pytest.raises(ValueError, match="4-channel latents but the model takes 3"):
        SDTPipeline(random_model(in_channels=3), pipe.scheduler, pipe.vae)


# ------------------------------------------------------------------ DiTPipeline equivalence


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    ).eval()


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_converted_dit_samples_what_dit_pipeline_samples(sampler, guidance_scale):
    dit, vae = tiny_diffusers_dit(num_classes=1000), tiny_vae()  # DiTPipeline's null class is 1000
    reference = DiTPipeline(dit, vae, make_scheduler("ddpm", sampler, learn_sigma=True))
    ours = SDTPipeline(convert_diffusers_dit(dit), make_scheduler("ddpm", sampler, learn_sigma=True), vae)
    for pipe in (reference, ours):
        pipe.set_progress_bar_config(disable=True)
    labels = [207, 3, 999]
    kwargs = dict(class_labels=labels, num_inference_steps=4, guidance_scale=guidance_scale, output_type="np")
    expected = reference(generator=generators(3), **kwargs).images
    got = ours(generator=generators(3), **kwargs).images  # all channels guided, as DiTPipeline does
    assert got.shape == expected.shape == (3, 16, 16, 3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert np.abs(expected[0] - expected[1]).max() > 1e-3  # the classes and seeds matter
    if guidance_scale != 1.0:  # DiT's original 3-channel guidance is another sampler
        three = ours(generator=generators(3), guidance_channels=3, **kwargs).images
        assert np.abs(three - expected).max() > 1e-4


def test_pipeline_is_exported_from_the_package():
    import sdtgen

    assert sdtgen.SDTPipeline is SDTPipeline
