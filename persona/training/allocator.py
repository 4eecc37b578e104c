"""The memory allocator a CPU training run uses, and the hint to preload a leaner one.

glibc's ``malloc`` keeps the memory of the large tensors a training step frees (in its heap, for the next
allocations), so the resident memory of a CPU run climbs well above what the run holds; tcmalloc returns it,
and is faster here too (``benchmarks/train_memory.py`` measures both; docs/ablation.md, "Training memory", has the
figures). tcmalloc is preloaded with ``LD_PRELOAD``, as PyTorch's own CPU launcher
(``torch.backends.xeon.run_cpu``) does.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger("persona")

LEAN_ALLOCATORS = ("tcmalloc", "jemalloc")
PRELOAD_HINT = (
    "LD_PRELOAD=libtcmalloc_minimal.so.4 (Debian and Ubuntu: apt-get install libtcmalloc-minimal4) before the "
    "command, accelerate launch included"
)


def preloaded_allocator(maps: Path = Path("/proc/self/maps")) -> str | None:
    """The lean allocator (:data:`LEAN_ALLOCATORS`) mapped into this process, if any; None where there is none or
    the process's maps cannot be read (not Linux)."""
    try:
        mapped = maps.read_text()
    except OSError:
        return None
    return next((name for name in LEAN_ALLOCATORS if f"lib{name}" in mapped), None)


def hint_lean_allocator(on_cpu: bool, maps: Path = Path("/proc/self/maps")) -> None:
    """Say, once per run, how to hold a CPU run's memory near what it uses, when it runs on glibc's allocator."""
    if on_cpu and maps.exists() and preloaded_allocator(maps) is None:
        logger.info(
            "Training on the CPU with glibc's allocator, which keeps the memory that training steps free, well above "
            'what training holds (docs/ablation.md, "Training memory"). To keep it near that, preload tcmalloc: %s.',
            PRELOAD_HINT,
        )
