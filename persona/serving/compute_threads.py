"""Only the decoding worker's thread opens torch's parallel regions, so that its OpenMP threads stay awake.

GNU OpenMP (torch's CPU builds) keeps a team of threads for each thread that opens a parallel region. Once more of
its threads exist than the machine has cores, it lets the idle ones sleep almost at once (its throttled spin
count), and every parallel operation of the worker then waits for its team to wake. A model loaded on the server's
main thread leaves such a team behind, and the worker's decoding steps took about 1.2-1.4x as long on 2 cores
(SmolLM2-135M in bfloat16, ``benchmarks/decode_step.py``: one row 40.8 ms against 29.7, 16 rows 66.1 against
56.0). :func:`one_thread` keeps the main thread's loading serial, so the worker's team is the only one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with torch's intra-op threads at one on this thread (no OpenMP team opened), then give torch back
    its thread count for the threads that compute later."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
