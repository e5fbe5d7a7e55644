"""Tests of sdtgen.vae: the shipped VAE, the identity VAE and the loader's errors."""

from __future__ import annotations

import json

import pytest
import torch

from sdtgen.data.animals import load_animals
from sdtgen.vae import LOGVAR_RANGE, builtin_vae_dir, load_vae, reconstruction_psnr, sample_posterior

# The shipped VAE scores 37.55 dB on these 200 test images (35.78 dB on the whole test
# split, see sdtgen/assets/vae/training_report.json); 1.5 dB of margin for numerics.
MIN_TEST_PSNR_DB = 36.0


@pytest.fixture(scope="module")
def builtin():
    return load_vae("builtin")


@pytest.fixture(scope="module")
def test_images():
    return load_animals("test")[0][:200].float() / 127.5 - 1


def test_builtin_loads_offline_and_describes_itself(builtin, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    info = load_vae("builtin").describe()
    assert info == builtin.describe()
    assert info["type"] == "autoencoder_kl" and info["source"] == "builtin"
    assert (info["image_channels"], info["latent_channels"], info["downsample_factor"]) == (1, 4, 2)
    report = json.loads((builtin_vae_dir() / "training_report.json").read_text())
    assert info["scale"] == pytest.approx(report["scaling_factor"]) and info["shift"] == 0.0


def test_builtin_shapes_and_unit_variance(builtin, test_images):
    mean, logvar = builtin.encode_moments(test_images[:8])
    assert mean.shape == logvar.shape == (8, 4, 16, 16)
    latents = builtin.sample_latent(mean, logvar, torch.Generator().manual_seed(0))
    again = builtin.sample_latent(mean, logvar, torch.Generator().manual_seed(0))
    assert torch.equal(latents, again) and not torch.equal(latents, builtin.scale_latent(mean))
    assert 0.5 < builtin.scale_latent(mean).std() < 2.0  # scaling_factor = 1 / latent std
    images = builtin.decode(latents)
    assert images.shape == (8, 1, 32, 32) and images.min() >= -1 and images.max() <= 1


def test_one_posterior_sampler(builtin, test_images):
    mean, logvar = builtin.encode_moments(test_images[:8])
    # diffusers clamps the moments already, so the clamp never changes them ...
    assert LOGVAR_RANGE[0] <= logvar.min() and logvar.max() <= LOGVAR_RANGE[1]
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    # ... and training's draw is the unclamped formula it always was, bit for bit.
    unclamped = (mean + torch.exp(0.5 * logvar) * noise - builtin.shift) * builtin.scale
    assert torch.equal(builtin.sample_latent(mean, logvar, noise=noise), unclamped)
    drawn = builtin.sample_latent(mean, logvar, torch.Generator().manual_seed(1))
    assert torch.equal(drawn, unclamped)  # the generator draws the same noise
    huge = torch.full_like(logvar, 100.0)
    assert torch.equal(
        sample_posterior(mean, huge, noise, scale=1.0, shift=0.0), mean + torch.exp(torch.tensor(10.0)) * noise
    )
    assert torch.equal(sample_posterior(mean, logvar, None, scale=2.0, shift=0.5), (mean - 0.5) * 2.0)
    identity = load_vae("identity", image_channels=1)
    assert torch.equal(identity.sample_latent(test_images[:8], logvar, noise=noise), test_images[:8])


def test_builtin_reconstruction_psnr(builtin, test_images):
    assert reconstruction_psnr(builtin, test_images) > MIN_TEST_PSNR_DB


def test_identity_round_trip_is_exact(test_images):
    vae = load_vae("identity", image_channels=1)
    mean, logvar = vae.encode_moments(test_images)
    latents = vae.sample_latent(mean, logvar, torch.Generator().manual_seed(0))
    assert torch.equal(latents, test_images) and torch.equal(vae.decode(latents), test_images)
    assert (vae.latent_channels, vae.downsample_factor) == (1, 1)
    shifted = load_vae("identity", image_channels=1, scale=2.0, shift=0.5)
    assert torch.allclose(shifted.decode(shifted.sample_latent(mean, logvar)), test_images)


def test_identity_needs_channels():
    with pytest.raises(ValueError, match="image_channels"):
        load_vae("identity")


def test_wrong_image_shape_message(builtin):
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*divisible by 2"):
        builtin.encode_moments(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="image_channels=3"):
        load_vae("builtin", image_channels=3)


def test_unknown_hub_id_offline_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as caught:
        load_vae("sdtgen-tests/no-such-vae")
    message = str(caught.value)
    assert "'sdtgen-tests/no-such-vae'" in message and "local Hugging Face cache" in message
    assert "download sdtgen-tests/no-such-vae --local-dir DIR" in message
    assert "--vae DIR" in message and "HF_HOME" in message


def test_missing_local_folder_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="VAE folder not found"):
        load_vae(str(tmp_path / "missing" / "vae"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_vae(str(tmp_path))
