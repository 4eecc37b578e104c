"""Whether this CPU computes in bfloat16 natively, and the hint a CPU training run gets from it.

bf16 autocast on a CPU pays where the CPU multiplies bfloat16 matrices itself (AVX512-BF16 or AMX, Intel Xeons
since Cooper Lake and Sapphire Rapids, AMD since Zen 4): there a budgeted run makes more updates in the same minutes
(docs/ablation.md, "bf16 on a CPU"). Elsewhere bfloat16 products are computed through float32 and gain nothing.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("persona")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX tiles)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def hint_cpu_precision(on_cpu: bool, bf16: bool, native_bf16: bool | None = None) -> None:
    """Say, once per run on the CPU, whether its precision suits the CPU: bf16 asked for where the CPU has no
    native bfloat16 (a warning), or float32 where it has (how to train faster). ``native_bf16``: the CPU's
    (:func:`cpu_has_native_bf16` by default)."""
    if not on_cpu:
        return
    native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    if bf16 and not native:
        logger.warning(
            "bf16 autocast on a CPU without native bfloat16 (AVX512-BF16 or AMX): its products go through float32 "
            "and gain nothing; leave bf16 off on this machine."
        )
    elif not bf16 and native:
        logger.info(
            "This CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): bf16: true (or --bf16 true) makes more "
            "updates in the same minutes (the offline SmolLM2 recipe: 167 against 130 in 900 s; docs/ablation.md, "
            '"bf16 on a CPU").'
        )
