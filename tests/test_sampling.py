"""`sdtgen sample`: seeds, batch and process invariance, guidance, class names, --ckpt kinds, bad input; samplers against exact ODEs."""

import io
import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.configuration_utils import FrozenDict
from PIL import Image

import test_training
from doc_commands import free_port, two_cpu_processes
from sdtgen.class_names import display_names, resolve_class
from sdtgen.cli import build_parser, main
from sdtgen.cli.sample import SamplePlan, sample_images
from sdtgen.config import load_config
from sdtgen.diffusion.flow_dpm_solver import FlowMatchDPMSolverMultistepScheduler
from sdtgen.diffusion.sampling import (
    DEFAULT_STEPS,
    SAMPLERS,
    Guidance,
    default_steps,
    denoise,
    guided_prediction,
    make_scheduler,
    objective_of,
    sample_generators,
    sample_seed,
    sampler_of,
)
from sdtgen.generation import generate, to_uint8
from sdtgen.pipeline import SDTPipeline
from sdtgen.runs import find_source, load_pipeline
from sdtgen.training.trainer import train
from sdtgen.vae import load_vae
from tiny_runs import random_model, write_run


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    """A DDPM run on the built-in VAE's 4x16x16 latents, with the animals' class names."""
    return write_run(tmp_path_factory.mktemp("ddpm") / "run", random_model("ddpm"))


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    """A flow-matching run in pixel space (1x32x32), trained without label dropout."""
    model = random_model("flow", in_channels=1, input_size=32, class_dropout_prob=0.0)
    return write_run(tmp_path_factory.mktemp("flow") / "run", model, objective="flow", vae="identity")


def sample(ckpt, out, *args: str) -> dict[str, bytes]:
    """Run `sdtgen sample` and return the files it wrote."""
    assert main(["sample", "--ckpt", str(ckpt), "--out", str(out), *args]) == 0
    return {path.name: path.read_bytes() for path in sorted(out.iterdir())}


def test_outputs_are_named_by_class_and_index(ddpm_run, tmp_path):
    files = sample(ddpm_run, tmp_path, "--class", "dog", "--class", "1", "--num", "2")
    assert sorted(files) == [
        "1-bird-000.png",
        "1-bird-001.png",
        "4-dog-000.png",
        "4-dog-001.png",
        "grid.png",
        "settings.json",
    ]
    settings = json.loads(files["settings.json"])
    # The run's sample config.
    assert settings["steps"] == 3 and settings["guidance_scale"] == 2.5 and settings["scheduler"] == "DDIMScheduler"
    assert settings["guidance_interval"] == [0.0, 0.8]  # the run's sample.guidance_interval
    assert settings["classes"] == [4, 1] and settings["vae"] == "builtin"


def assert_same_outputs(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    """The same files; PNG pixels within 1/255, since batched matmuls may round ~1e-6 apart (draws are exact);
    the same settings but for the number of processes."""
    assert a.keys() == b.keys()
    if "settings.json" in a:
        settings = [
            {k: v for k, v in json.loads(files["settings.json"]).items() if k != "num_processes"} for files in (a, b)
        ]
        assert settings[0] == settings[1]
    for name in (name for name in a if name.endswith(".png")):
        pixels = [np.asarray(Image.open(io.BytesIO(files[name])), dtype=np.int16) for files in (a, b)]
        assert np.abs(pixels[0] - pixels[1]).max() <= 1, name


def test_batch_size_does_not_change_any_image(ddpm_run, tmp_path):
    request = "--class 3 --class 7 --num 3 --sampler ddpm --steps 4 --guidance-scale 3".split()
    one = sample(ddpm_run, tmp_path / "one", *request, "--batch-size", "1")
    four = sample(ddpm_run, tmp_path / "four", *request, "--batch-size", "4")
    assert_same_outputs(one, four)


def test_sample_i_depends_only_on_seed_and_i(ddpm_run):
    """Disjoint index ranges (as processes take them) give the images of the whole request."""
    args = build_parser().parse_args(
        ["sample", "--ckpt", str(ddpm_run), "--num", "3", "--class", "2", "--class", "5", "--seed", "7"]
        + ["--guidance-scale", "2", "--guidance-interval", "0", "1"]  # the pipeline call below guides every step
    )
    plan = SamplePlan.from_args(args, find_source(ddpm_run))
    pipe = load_pipeline(plan.source, sampler="ddpm")
    whole = sample_images(plan, pipe, range(6))
    parts = torch.cat([sample_images(plan, pipe, [4, 5]), sample_images(plan, pipe, [0, 1, 2, 3])])
    torch.testing.assert_close(parts[[2, 3, 4, 5, 0, 1]], whole, rtol=0, atol=1e-5)
    # Sample i is the pipeline's image for one generator seeded with sample_seed(seed, i).
    alone = pipe(
        class_labels=[5],
        generator=torch.Generator().manual_seed(sample_seed(7, 4)),
        num_inference_steps=3,
        guidance_scale=2.0,
        output_type="pt",
    ).images
    torch.testing.assert_close(alone[0], whole[4], rtol=0, atol=1e-5)
    assert sample_seed(7, 4) == 7 * 1_000_003 + 4
    assert (whole[3] - whole[4]).abs().max() > 0.01  # same class, other seed: another image


def test_generate_gives_sample_i_the_same_image_in_any_batch():
    """Whatever the batch size and whichever other indices share its batch (a stochastic sampler included)."""
    model = random_model("ddpm")
    pipe = SDTPipeline.from_model(model, load_vae("builtin"), objective="ddpm", sampler="ddpm")
    labels = [3, 3, 7, 1, 0, 7]
    request = dict(seed=7, steps=3, guidance=Guidance(2.0), output_type="pt")
    whole = generate(pipe, labels, range(6), batch_size=6, **request)
    batches: list[list[int]] = []
    mixed = generate(
        pipe,
        labels,
        [4, 1, 5, 0, 3, 2],
        batch_size=4,
        on_batch=lambda indices, images: batches.append(indices),
        **request,
    )
    singles = generate(pipe, labels, [2, 0], batch_size=1, **request)
    assert batches == [[4, 1, 5, 0], [3, 2]] and mixed.shape == whole.shape == (6, 1, 32, 32)
    torch.testing.assert_close(mixed, whole[[4, 1, 5, 0, 3, 2]], rtol=0, atol=1e-5)
    torch.testing.assert_close(singles, whole[[2, 0]], rtol=0, atol=1e-5)
    assert (whole[0] - whole[1]).abs().max() > 0.01  # same class, other seed: another image
    uint8 = generate(pipe, labels, range(6), batch_size=6, seed=7, steps=3, guidance=Guidance(2.0))
    assert uint8.dtype == torch.uint8 and torch.equal(uint8, to_uint8(whole))
    latents = generate(pipe, labels, [5], batch_size=1, seed=7, steps=3, guidance=Guidance(2.0), output_type="latent")
    torch.testing.assert_close(((pipe.latent_vae().decode(latents) + 1) / 2)[0], whole[5], rtol=0, atol=1e-5)


def test_generate_refuses_non_finite_samples():
    model = random_model("flow")
    with torch.no_grad():
        model.final_layer.linear.bias.fill_(float("nan"))
    pipe = SDTPipeline.from_model(model, load_vae("builtin"), objective="flow")
    with pytest.raises(RuntimeError, match="Samples 2..3 came out non-finite") as error:
        generate(pipe, [0, 1, 2, 3], [2, 3], seed=0, batch_size=2, steps=1)
    assert "--" not in str(error.value)  # the library names no command-line option


def fixed_predictions(cond: torch.Tensor, uncond: torch.Tensor):
    """A fake model returning `cond` for real labels and `uncond` for the null class (10)."""
    return lambda x, t, y: torch.where((y == 10).view(-1, 1, 1, 1), uncond.repeat(2, 1, 1, 1), cond.repeat(2, 1, 1, 1))


def test_guidance_channels_guide_only_the_first_n_channels():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 8, 4, 4, generator=g)
    model, x = fixed_predictions(cond, uncond), torch.zeros(2, 4, 4, 4)
    t, y = torch.tensor([5, 5]), torch.tensor([1, 2])
    every = guided_prediction(model, x, t, y, 4.0, 10, None)
    three = guided_prediction(model, x, t, y, 4.0, 10, 3)
    guided = uncond + 4.0 * (cond - uncond)
    torch.testing.assert_close(every[:, :4], guided[:, :4])
    torch.testing.assert_close(three[:, :3], guided[:, :3])
    assert torch.equal(three[:, 3], cond[:, 3])  # the 4th channel: conditional, unguided (DiT's original)
    assert torch.equal(every[:, 4:], cond[:, 4:]) and torch.equal(three[:, 4:], cond[:, 4:])  # learned variance


def test_guidance_interval_guides_exactly_the_steps_inside_it():
    model = random_model("ddpm")
    batches: list[int] = []
    model.register_forward_hook(lambda module, inputs, output: batches.append(inputs[0].shape[0]))
    labels = torch.tensor([1, 2])

    def run(**guidance) -> torch.Tensor:
        batches.clear()
        scheduler = make_scheduler("ddpm", "ddim", learn_sigma=True)
        return denoise(
            model, scheduler, labels, steps=10, guidance=Guidance(**guidance), generator=sample_generators(0, [0, 1])
        )

    partial = run(scale=3.0, interval=(0.35, 0.75))
    timesteps = make_scheduler("ddpm", "ddim", True)
    timesteps.set_timesteps(10)
    inside = [0.35 <= t / 1000 <= 0.75 for t in timesteps.timesteps.tolist()]
    assert batches == [4 if guided else 2 for guided in inside] and sum(inside) == 4
    assert torch.equal(run(scale=3.0, interval=(0.0, 1.0)), run(scale=3.0))
    assert torch.equal(run(scale=3.0, interval=(0.95, 1.0)), run(scale=1.0))  # no step has t >= 950
    assert not torch.equal(partial, run(scale=3.0)) and not torch.equal(partial, run(scale=1.0))


def test_every_ckpt_kind_gives_the_same_images(ddpm_run, tmp_path):
    bare = tmp_path / "bare-model"
    shutil.copytree(ddpm_run / "checkpoints" / "checkpoint-2" / "model", bare)
    assert main(["export", "--ckpt", str(ddpm_run), "--out", str(tmp_path / "pipe")]) == 0
    folders = {
        "run": ddpm_run,
        "checkpoint": ddpm_run / "checkpoints" / "checkpoint-2",
        "model": ddpm_run / "checkpoints" / "checkpoint-2" / "model",
        "pipeline": tmp_path / "pipe",
    }
    request = ["--class", "2", "--num", "2", "--steps", "3", "--guidance-scale", "2"]
    grids = {kind: sample(folder, tmp_path / kind, *request)["grid.png"] for kind, folder in folders.items()}
    assert {kind: find_source(folder).kind for kind, folder in folders.items()} == {kind: kind for kind in folders}
    assert len(set(grids.values())) == 1
    # A bare model folder knows no class names (nor its VAE): files are named by id alone.
    bare_files = sample(bare, tmp_path / "bare", *request, "--vae", "builtin")
    assert bare_files["2-001.png"] == (tmp_path / "run" / "2-cat-001.png").read_bytes()


def test_flow_run_in_pixel_space(flow_run, tmp_path, capsys):
    files = sample(flow_run, tmp_path, "--class", "zebra", "--num", "2", "--sampler", "heun", "--steps", "2")
    assert "9-zebra-001.png" in files
    settings = json.loads(files["settings.json"])
    # No null class: no guidance.
    assert settings["scheduler"] == "FlowMatchHeunDiscreteScheduler" and settings["guidance_scale"] == 1.0


def test_list_classes(ddpm_run, tmp_path, capsys):
    assert main(["sample", "--ckpt", str(ddpm_run), "--list-classes"]) == 0
    assert capsys.readouterr().out.splitlines()[4] == "4  dog"
    imagenet = tmp_path / "imagenet-model"
    random_model(num_classes=1000).save_pretrained(imagenet)
    assert main(["sample", "--ckpt", str(imagenet), "--list-classes"]) == 0
    assert "207  golden retriever" in capsys.readouterr().out.splitlines()


def test_class_names_resolve():
    imagenet = display_names(None, 1000)
    for spec in ("golden retriever", "Golden_Retriever", " golden-retriever ", "207", 207):
        assert resolve_class(spec, imagenet, 1000) == 207
    assert display_names([f"n{i:08d}" for i in range(1000)], 1000) == imagenet  # ImageNet folder names (wnids)
    animals = display_names(json.loads('["bear", "bird", "cat", "cow", "dog"]'), 5)
    assert resolve_class("Dog", animals, 5) == 4
    with pytest.raises(ValueError, match="did you mean 'golden retriever'"):
        resolve_class("golden retreiver", imagenet, 1000)
    with pytest.raises(ValueError, match="no class names"):
        resolve_class("dog", None, 5)


def bad_inputs(ddpm_run, flow_run, tmp_path) -> dict[str, tuple[list[str], str]]:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(ddpm_run, corrupt)
    (corrupt / "checkpoints" / "checkpoint-2" / "model" / "diffusion_pytorch_model.safetensors").write_bytes(
        b"not a safetensors file"
    )
    broken_config = tmp_path / "broken-config"
    shutil.copytree(ddpm_run / "checkpoints" / "checkpoint-2" / "model", broken_config)
    (broken_config / "config.json").write_text("{ truncated")
    bare = tmp_path / "bare"
    shutil.copytree(ddpm_run / "checkpoints" / "checkpoint-2" / "model", bare)
    random_model(num_classes=1000).save_pretrained(tmp_path / "imagenet")
    run = ["--ckpt", str(ddpm_run)]
    return {
        "class out of range": ([*run, "--class", "10"], "outside this model's range 0..9"),
        "unknown name": ([*run, "--class", "dgo"], "did you mean 'dog'"),
        "missing ckpt": (["--ckpt", str(tmp_path / "nope")], "does not exist"),
        "corrupt weights": (["--ckpt", str(corrupt)], "corrupt"),
        "corrupt config": (["--ckpt", str(broken_config)], "corrupt"),
        "not a model folder": (["--ckpt", str(tmp_path)], "none of a run folder"),
        "bare model, no vae": (["--ckpt", str(bare)], "pass --vae"),
        "steps < 1": ([*run, "--steps", "0"], "at least 1"),
        "negative guidance": ([*run, "--guidance-scale", "-1"], "must be >= 0"),
        "guidance without null class": (["--ckpt", str(flow_run), "--guidance-scale", "2"], "without label dropout"),
        "guidance channels": ([*run, "--guidance-channels", "5"], "1..4"),
        "guidance interval": ([*run, "--guidance-interval", "0.8", "0.2"], "LOW <= HIGH"),
        "sampler of another objective": (
            ["--ckpt", str(flow_run), "--sampler", "ddim"],
            "does not fit objective 'flow'",
        ),
        "no samples": ([*run, "--num", "0"], "--num must be at least 1"),
        "1000 classes, none chosen": (["--ckpt", str(tmp_path / "imagenet")], "choose some with --class"),
        "bad device": ([*run, "--device", "gpu0"], "is not a device"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "class out of range",
        "unknown name",
        "missing ckpt",
        "corrupt weights",
        "corrupt config",
        "not a model folder",
        "bare model, no vae",
        "steps < 1",
        "negative guidance",
        "guidance without null class",
        "guidance channels",
        "guidance interval",
        "sampler of another objective",
        "no samples",
        "1000 classes, none chosen",
        "bad device",
    ],
)
def test_bad_input_is_one_line_and_exit_2(ddpm_run, flow_run, tmp_path, capsys, case):
    argv, expected = bad_inputs(ddpm_run, flow_run, tmp_path)[case]
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", *argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1, err
    assert lines[0].startswith("sdtgen sample: error: ") and expected in lines[0] and "Traceback" not in err


def test_default_ckpt_is_the_builtin_run(ddpm_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["sample"])
    assert "accelerate launch -q scripts/train_gen.py" in capsys.readouterr().err
    shutil.copytree(ddpm_run, tmp_path / "runs" / "animals-sdt")
    assert main(["sample", "--class", "0", "--num", "1"]) == 0
    assert (tmp_path / "samples" / "0-bear-000.png").is_file()


def test_sample_redraws_the_trainers_grid(tmp_path):
    """A really trained run: same seed rule, same defaults (the run's sample config), same decoding."""
    run = train(
        load_config(
            None,
            [f"output_dir={tmp_path / 'run'}", *test_training.TINY, "train.max_steps=2", "sample.guidance_scale=1.5"],
        )
    )
    ours = sample(run, tmp_path / "out", "--num", "1")["grid.png"]
    assert_same_outputs({"grid.png": (run / "samples" / "grid-0000002.png").read_bytes()}, {"grid.png": ours})


@pytest.mark.slow
def test_two_processes_write_the_images_of_one(ddpm_run, tmp_path):
    request = [
        "--ckpt",
        str(ddpm_run),
        "--class",
        "1",
        "--class",
        "2",
        "--num",
        "3",
        "--sampler",
        "ddpm",
        "--batch-size",
        "2",
    ]
    single = sample(ddpm_run, tmp_path / "one", *request[2:])
    launch, env = two_cpu_processes()
    command = [
        *launch,
        "-m",
        "sdtgen.cli",
        "sample",
        *request,
        "--out",
        str(tmp_path / "two"),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    two = {path.name: path.read_bytes() for path in sorted((tmp_path / "two").iterdir())}
    assert_same_outputs(two, single)
    # Each process sampled its share (a CPU launch once ran as two processes doing everything).
    assert (
        json.loads(two["settings.json"])["num_processes"] == 2
        and json.loads(single["settings.json"])["num_processes"] == 1
    )


def test_a_finished_command_leaves_its_process_group(ddpm_run):
    """A process that exits still in a gloo group can abort as the group's threads shut down (a failed launch)."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    assert main(["sample", "--ckpt", str(ddpm_run), "--list-classes"]) == 0
    assert not torch.distributed.is_initialized()


class GaussianFlow:
    """The exact velocity of the flow x_t = (1 - t) x0 + t noise for data x0 ~ N(mean, std^2), channel by channel.

    x_t is Gaussian, with mean (1 - t) m and variance (1 - t)^2 s^2 + t^2, and jointly Gaussian with
    the velocity noise - x0 (covariance t - (1 - t) s^2), so the conditional mean is linear in x:
    E[noise - x0 | x_t = x] = -m + (t - (1 - t) s^2) / variance * (x - (1 - t) m). The ODE
    dx/dt = E[...] carries x_1 = z to x_t = (1 - t) m + sqrt(variance) z (differentiate it to
    check), so from the noise z it ends at m + s z. Called as denoise calls an SDTDiT.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean, self.std = (torch.tensor(values, dtype=torch.float64).view(1, -1, 1, 1) for values in (mean, std))
        self.config = FrozenDict(in_channels=len(mean), input_size=2, num_classes=1, class_dropout_prob=0.0)
        self.device, self.dtype = torch.device("cpu"), torch.float64

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t = (timestep.double() / 1000).view(-1, 1, 1, 1)
        m, s2 = self.mean, self.std**2
        variance = (1 - t) ** 2 * s2 + t**2
        return -m + (t - (1 - t) * s2) / variance * (x - (1 - t) * m)

    def endpoint(self, noise: torch.Tensor) -> torch.Tensor:
        """Where the exact ODE from t = 1 to t = 0 takes `noise`."""
        return self.mean + self.std * noise.double()


GAUSSIAN = GaussianFlow(mean=(0.5, -1.0), std=(0.3, 2.0))


def gaussian_samples(sampler: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`sampler`'s samples of GAUSSIAN in `steps` steps, and the exact ODE endpoints of their noise."""
    scheduler = make_scheduler("flow", sampler, learn_sigma=False)
    labels = torch.zeros(4, dtype=torch.long)
    x = denoise(
        GAUSSIAN, scheduler, labels, steps=steps, guidance=Guidance(1.0), generator=torch.Generator().manual_seed(0)
    )
    noise = torch.randn(4, 2, 2, 2, generator=torch.Generator().manual_seed(0))  # what denoise starts from
    return x.double(), GAUSSIAN.endpoint(noise)


def ode_error(sampler: str, steps: int) -> float:
    x, exact = gaussian_samples(sampler, steps)
    return (x - exact).abs().max().item()


def test_flow_samplers_converge_to_the_exact_ode_endpoint_at_their_order():
    """Each doubling of the steps halves Euler's error and (nearly) quarters the second-order samplers'."""
    errors = {sampler: [ode_error(sampler, steps) for steps in (10, 20, 40, 80)] for sampler in SAMPLERS["flow"]}
    for sampler, errs in errors.items():
        ratios = [later / earlier for earlier, later in zip(errs, errs[1:])]
        # DPM-Solver++(2M) on equal steps in t: about 0.3 at these step counts, 1/4 in the limit.
        low, high = (0.4, 0.6) if sampler == "euler" else (0.0, 0.4)
        assert all(low < ratio < high for ratio in ratios), (sampler, ratios)
    assert errors["dpm++"][0] < errors["euler"][0] / 3, errors


def test_flow_dpm_steps_from_t_1_to_0_and_calls_the_model_at_1000_t():
    scheduler = make_scheduler("flow", "dpm++", learn_sigma=False)
    scheduler.set_timesteps(4)
    assert scheduler.sigmas.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert scheduler.timesteps.tolist() == [1000.0, 750.0, 500.0, 250.0]
    # One step from t = 1 lands on E[x0 | x_1], the data mean (x_1 is independent of x0).
    x, _ = gaussian_samples("dpm++", 1)
    torch.testing.assert_close(x, GAUSSIAN.mean.expand_as(x), rtol=0, atol=1e-6)


def test_sampler_and_objective_of_every_scheduler_make_scheduler_builds():
    for objective, samplers in SAMPLERS.items():
        for sampler in samplers:
            scheduler = make_scheduler(objective, sampler, learn_sigma=False)
            assert (objective_of(scheduler), sampler_of(scheduler)) == (objective, sampler)
            assert objective_of(type(scheduler).__name__) == objective  # the class name model_index.json records
            assert default_steps(scheduler) == DEFAULT_STEPS[objective][sampler]
    assert sampler_of(EulerDiscreteScheduler()) is None


def test_a_flow_pipeline_saved_with_dpm_reloads_with_it(flow_run, tmp_path):
    pipe = load_pipeline(find_source(flow_run), sampler="dpm++")
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = SDTPipeline.from_pretrained(tmp_path / "pipe")
    assert type(loaded.scheduler) is FlowMatchDPMSolverMultistepScheduler
    assert (loaded.objective, sampler_of(loaded.scheduler)) == ("flow", "dpm++")
    assert find_source(tmp_path / "pipe").objective() == "flow"  # told from model_index.json alone
    kwargs = dict(class_labels=[1, 2], num_inference_steps=3, output_type="np")
    before, after = (p(generator=sample_generators(0, range(2)), **kwargs).images for p in (pipe, loaded))
    assert np.array_equal(before, after)
