"""GPU checks: flex and folded training agree with the reference and never hold an N x N bias.

Skipped without CUDA; run on a GPU machine with `pytest tests/test_gpu.py`.
"""

import pytest
import torch

from sdtgen import SDTDiT
from sdtgen.models.attention import SpatialDecayAttention
from sdtgen.models.backends import flex_available

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and flex_available()), reason="needs CUDA and FlexAttention"
)


def _attention_step(variant: str, backend: str, x: torch.Tensor, dtype: torch.dtype):
    torch.manual_seed(0)
    attn = SpatialDecayAttention(128, 2, attention=variant, backend=backend).cuda()
    if variant.startswith("sdt"):
        with torch.no_grad():
            attn.gate.weight.normal_(0, 0.2)
    x = x.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        out = attn(x, (16, 16))
    (out.float() * torch.linspace(-1, 1, out.numel(), device="cuda").view_as(out)).sum().backward()
    return out.float(), x.grad, {n: p.grad for n, p in attn.named_parameters()}


@pytest.mark.parametrize("backend", ["flex", "folded"])
@pytest.mark.parametrize("variant", ["sdt", "sdt-decomposed", "learned-fixed", "fixed"])
def test_training_matches_math_fp32(variant, backend):
    x = torch.randn(4, 256, 128, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    out_f, gx_f, g_f = _attention_step(variant, backend, x, torch.float32)
    out_m, gx_m, g_m = _attention_step(variant, "math", x, torch.float32)
    torch.testing.assert_close(out_f, out_m, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(gx_f, gx_m, rtol=2e-3, atol=2e-3)
    for name in g_m:
        torch.testing.assert_close(g_f[name], g_m[name], rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("backend", ["flex", "folded"])
def test_bf16_close_to_fp32_reference(backend):
    x = torch.randn(4, 256, 128, device="cuda")
    out_f, _, g_f = _attention_step("sdt", backend, x, torch.bfloat16)
    out_m, _, g_m = _attention_step("sdt", "math", x, torch.float32)
    assert (out_f - out_m).abs().max() < 0.05 * out_m.abs().max()
    cosine = torch.nn.functional.cosine_similarity(g_f["alpha"].flatten(), g_m["alpha"].flatten(), dim=0)
    assert cosine > 0.99


def _peak_training_memory(backend: str, attention: str) -> float:
    model = SDTDiT.from_preset("S/2", attention=attention, attention_backend=backend, input_size=64).cuda()
    x = torch.randn(8, 4, 64, 64, device="cuda")
    t, y = torch.randint(0, 1000, (8,), device="cuda"), torch.randint(0, 1000, (8,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(x, t, y).float().square().mean().backward()  # compile / warm up
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(x, t, y).float().square().mean().backward()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def test_flex_and_folded_hold_no_nxn_bias_in_memory():
    """At 1024 tokens one layer's N x N bias for batch 8 is 8 * 6 * 1024^2 * 2 B = 96 MiB in bf16."""
    vanilla = _peak_training_memory("sdpa", "vanilla")
    flex = _peak_training_memory("flex", "sdt")
    folded = _peak_training_memory("folded", "sdt")
    sdpa = _peak_training_memory("sdpa", "sdt")
    print(
        f"peak training MiB at 1024 tokens, batch 8, bf16: vanilla {vanilla:.0f}, sdt flex {flex:.0f}, "
        f"sdt folded {folded:.0f}, sdt sdpa {sdpa:.0f}"
    )
    assert flex < 1.15 * vanilla and folded < 1.3 * vanilla
    assert sdpa > flex + 6 * 96  # the materialised masks, saved for backward in (at least half of) the layers


def test_short_bf16_flex_training_run_is_finite_and_learns_the_decay():
    torch.manual_seed(0)
    model = SDTDiT.from_preset("S/2", attention="sdt", input_size=16, num_classes=10, depth=4).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(32, 4, 16, 16, device="cuda")
    y = torch.randint(0, 10, (32,), device="cuda")
    alpha_before = torch.stack([b.attn.alpha.detach().clone() for b in model.blocks])
    losses = []
    for _step in range(30):
        t = torch.randint(0, 1000, (32,), device="cuda")
        noise = torch.randn_like(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x + noise, t, y)
        loss = (out[:, :4].float() - noise).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])
    alpha_after = torch.stack([b.attn.alpha.detach() for b in model.blocks])
    assert (alpha_after - alpha_before).abs().max() > 1e-3


def test_folded_runs_a_fused_kernel_deterministically():
    """No math fallback (a fused flash / cuDNN / efficient kernel), and identical gradients twice."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(4, 256, 128, device="cuda")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _attention_step("sdt", "folded", x, torch.bfloat16)
    kernels = {event.key for event in prof.key_averages()}
    print("folded SDPA kernels:", sorted(k for k in kernels if "attention" in k))
    assert any(("flash" in k or "cudnn" in k or "efficient" in k) and "backward" in k for k in kernels)
    assert "aten::_scaled_dot_product_attention_math" not in kernels
    first = _attention_step("sdt", "folded", x, torch.bfloat16)[2]
    second = _attention_step("sdt", "folded", x, torch.bfloat16)[2]
    print("folded bf16 gradients bit-identical across two runs:", all(torch.equal(first[n], second[n]) for n in first))
