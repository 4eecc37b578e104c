"""persona-serve loads its model serially on the main thread, so that the decoding worker's OpenMP team is the only
one (persona/serving/compute_threads.py)."""

from __future__ import annotations

import pytest
import torch

from persona.configs import DataArguments, ModelArguments
from persona.model.generation import DecodingArguments
from persona.serving import server
from persona.serving.compute_threads import one_thread


def test_one_thread_holds_torch_at_one_thread_for_the_block_only():
    threads = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == threads
    with pytest.raises(RuntimeError, match="inside"), one_thread():
        raise RuntimeError("inside")
    assert torch.get_num_threads() == threads


def test_the_own_engine_loads_its_weights_on_one_thread_and_decodes_on_all(trained_model_dir, monkeypatch):
    """The weights load while torch holds one thread; afterwards torch has its threads back for the worker."""
    threads, seen = torch.get_num_threads(), []
    torch.set_num_threads(2)  # two threads to hand back, whatever this machine's count
    loading = server.load_for_inference

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return loading(*args, **kwargs)

    monkeypatch.setattr(server, "load_for_inference", recording)
    model_args = ModelArguments(model_name_or_path=str(trained_model_dir))
    engine = server.build_engine(model_args, DataArguments(), server.ServeArguments(), DecodingArguments())
    try:
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        engine.close()
        torch.set_num_threads(threads)
