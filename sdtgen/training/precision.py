"""Which precision `train.mixed_precision=auto` trains in: bf16 where the device runs it fast.

bf16 autocast pays only where the hardware multiplies bf16 natively: CUDA GPUs with bf16
support, and CPUs with AVX512-BF16 or AMX (Intel since Cooper Lake / Sapphire Rapids, AMD
since Zen 4). Elsewhere (an AVX2-only CPU) PyTorch emulates bf16 matmuls and they run
tens of times slower than fp32, so auto stays in fp32. The decision depends on the
machine only (no timing), so the same command on the same machine always trains the same
model; the resolved value is written to the run's config.yaml.
"""

from __future__ import annotations

import torch


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """`requested` unless it is "auto": then "bf16" where `device` computes bf16 natively, else "no"."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "no"
    return "no"
