"""A trained persona model written as one GGUF file, for llama.cpp and the apps on top of it (Ollama, LM Studio).

What goes in: the language model (the multiple-choice head is not needed to chat), the tokenizer (tokens, their
types, merges, the pre-tokenizer's name), the special tokens, the chat template that renders the model's layout
(persona's template for a model trained in the reference layout, the model's own for one trained in its chat
template) and the generation defaults of ``generation_config.json``. Written with the ``gguf`` package: its writer,
its tensor-name map, its special-vocabulary reader and its Q8_0 quantizer.

Two architectures: the GPT-2 family (GPT-2, DialoGPT; llama.cpp's ``gpt2``) and Llama (SmolLM2; ``llama``). A model
trained with token types is refused: the speaker embeddings are added to every position of a segment, which no
chat template can carry and no change of the token embeddings reproduces.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from persona.errors import ConfigError
from persona.model.dual_heads import is_head_parameter
from persona.model.facts import PersonaFacts
from persona.model.loading import LoadedModel

logger = logging.getLogger(__name__)

OUTTYPES = ("f32", "f16", "q8_0")
_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
_ARCHITECTURES = {"gpt2": gguf.MODEL_ARCH.GPT2, "llama": gguf.MODEL_ARCH.LLAMA}
_GPT2_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


@dataclass
class ExportSummary:
    """What was written: the file, its size, the tensor count and the pre-tokenizer named in it."""

    path: Path
    size: int
    tensors: int
    pre_tokenizer: str


def check_exportable(config, name: str) -> str:
    """The ``model_type`` of the trained model of ``config`` if llama.cpp can run it as persona feeds it (checked
    before any weight is loaded); a :class:`ConfigError` that says why not else."""
    if PersonaFacts.of(config).token_types:
        raise ConfigError(
            "this model was trained with token types (speaker embeddings added at every position), which a GGUF chat "
            "template cannot carry",
            where=name,
            fix="train it with --use_token_types false to export it (persona-eval --use_token_types false measures "
            "what this model loses without them).",
        )
    if config.model_type not in _ARCHITECTURES:
        raise ConfigError(
            f"export to GGUF supports the GPT-2 family and Llama-architecture models, not '{config.model_type}'",
            where=name,
            fix="train a GPT-2, DialoGPT or Llama-architecture model (SmolLM2) to run it in llama.cpp.",
        )
    unusual = {
        "gpt2": ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"),
        "llama": ("attention_bias", "mlp_bias"),
    }[config.model_type]
    if any(getattr(config, name, False) for name in unusual):
        raise ConfigError(
            f"the model sets {', '.join(n for n in unusual if getattr(config, n, False))}, which llama.cpp's "
            f"'{config.model_type}' does not compute",
            where=name,
            fix="export a model with the architecture's defaults.",
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if config.model_type == "llama" and rope.get("rope_type", "default") != "default":
        raise ConfigError(
            f"rope scaling '{rope['rope_type']}' is not exported",
            where=name,
            fix="export a model with plain rotary embeddings (SmolLM2's).",
        )
    return config.model_type


def pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's name for how the tokenizer splits text before merging (``tokenizer.ggml.pre``): ``gpt-2`` for
    GPT-2's byte-level split, ``smollm`` for that split after single digits; a :class:`ConfigError` for any other."""
    pre = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    byte_level = steps[-1].get("use_regex", True) and not steps[-1].get("add_prefix_space", False)
    if kinds == ["ByteLevel"] and byte_level:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and byte_level:
        return "smollm"
    raise ConfigError(
        f"the tokenizer splits text with {kinds}, which persona cannot name for llama.cpp",
        where=getattr(tokenizer, "name_or_path", "tokenizer"),
        fix="export a model with a GPT-2-style byte-level tokenizer (GPT-2, DialoGPT, SmolLM2).",
    )


def _vocabulary(tokenizer, rows: int) -> tuple[list[str], list[int]]:
    """Every token of the embedding's ``rows`` with its GGUF type: special tokens are control tokens (a template's
    ``<speaker1>`` is one token), other added tokens user-defined, rows past the tokenizer unused padding."""
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if len(by_id) > rows:
        raise ConfigError(
            f"the tokenizer has {len(by_id)} tokens, the model's embeddings {rows} rows",
            where=getattr(tokenizer, "name_or_path", "tokenizer"),
            fix="export the folder persona-train wrote, whose embeddings were resized to its tokenizer.",
        )
    special = set(tokenizer.all_special_ids)
    added = set(tokenizer.added_tokens_decoder)
    tokens, types = [], []
    for index in range(rows):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[index])
        if index in special:
            types.append(gguf.TokenType.CONTROL)
        elif index in added:
            types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _special_vocab(loaded: LoadedModel, folder: Path, rows: int) -> gguf.SpecialVocab:
    """Merges and chat template read from ``folder``; the special ids as persona generates with them (the layout's
    :meth:`~persona.data.input_layouts.Layout.export_ids`: begin, end, pad and, in the reference layout, the partner's
    ``<speaker2>`` as end of turn) and the unknown token. No token is
    added by the tokenizer: the template writes them."""
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=rows)
    tokenizer = loaded.tokenizer
    special.special_token_ids = loaded.layout.export_ids()
    if tokenizer.unk_token_id is not None:
        special.special_token_ids["unk"] = tokenizer.unk_token_id
    special.add_special_token = {"bos": False, "eos": False}
    special.chat_template = tokenizer.chat_template
    return special


def _hyperparameters(writer: gguf.GGUFWriter, config, model_type: str, rows: int) -> None:
    if model_type == "gpt2":
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        return
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_vocab_size(rows)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)


def _sampling_defaults(writer: gguf.GGUFWriter, generation_config) -> None:
    """The model's decoding defaults (``generation_config.json``) as llama.cpp's ``general.sampling.*``."""
    if generation_config is None or not generation_config.do_sample:
        return
    writer.add_sampling_temp(float(generation_config.temperature))
    writer.add_sampling_top_p(float(generation_config.top_p))
    writer.add_sampling_top_k(int(generation_config.top_k or 0))
    if generation_config.repetition_penalty not in (None, 1.0):
        writer.add_sampling_penalty_repeat(float(generation_config.repetition_penalty))


def _rope_order(weight: np.ndarray, heads: int) -> np.ndarray:
    """q/k rows from transformers' rotary order (two halves per head) to llama.cpp's (interleaved pairs)."""
    halves = weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
    return halves.swapaxes(1, 2).reshape(weight.shape)


def _language_model(loaded: LoadedModel, model_type: str) -> list[tuple[str, np.ndarray]]:
    """The language model's tensors as llama.cpp's names and layouts (float32): GPT-2's Conv1D weights transposed
    to rows of outputs, Llama's q/k rows in llama.cpp's rotary order; the output matrix written when it is not the
    token embedding (GPT-2's always, as llama.cpp reads it)."""
    config = loaded.model.config
    blocks = config.n_layer if model_type == "gpt2" else config.num_hidden_layers
    names = gguf.get_tensor_name_map(_ARCHITECTURES[model_type], blocks)
    tied = model_type == "llama" and getattr(config, "tie_word_embeddings", False)
    tensors = []
    for name, value in loaded.model.state_dict().items():
        if is_head_parameter(name) or name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if tied and name == "lm_head.weight":
            continue
        data = value.detach().to(torch.float32).cpu().numpy()
        if model_type == "gpt2" and name.endswith(_GPT2_CONV1D):
            data = data.T
        if name.endswith("self_attn.q_proj.weight"):
            data = _rope_order(data, config.num_attention_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            data = _rope_order(data, config.num_key_value_heads)
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ConfigError(
                f"tensor '{name}' has no llama.cpp name", where=loaded.name, fix="export an unmodified architecture."
            )
        tensors.append((target, np.ascontiguousarray(data)))
    return tensors


def _stored(data: np.ndarray, outtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """A tensor in the file's type: vectors (norms, biases) stay float32 as llama.cpp wants; matrices f16, or Q8_0
    where rows split into its blocks of 32 (else f16)."""
    if outtype == "f32" or data.ndim == 1:
        return data.astype(np.float32), None
    if outtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return data.astype(np.float16), None


def export_gguf(loaded: LoadedModel, folder: Path, out: Path, outtype: str = "f16") -> ExportSummary:
    """Write the persona model ``loaded`` (read from ``folder``) to ``out`` as GGUF of ``outtype``.

    The file appears whole or not at all: it is written beside ``out`` under a temporary name, then renamed.
    """
    model_type = check_exportable(loaded.model.config, loaded.name)
    pre = pre_tokenizer_name(loaded.tokenizer)
    config = loaded.model.config
    rows = loaded.model.get_input_embeddings().weight.shape[0]
    tokens, types = _vocabulary(loaded.tokenizer, rows)
    tensors = _language_model(loaded, model_type)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".tmp-{out.name}-{os.getpid()}"
    try:
        writer = gguf.GGUFWriter(partial, _ARCHITECTURES[model_type].name.lower())
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(Path(loaded.name).name or loaded.name)
        writer.add_file_type(_FILE_TYPES[outtype])
        if outtype == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _hyperparameters(writer, config, model_type, rows)
        _sampling_defaults(writer, getattr(loaded.model, "generation_config", None))
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        _special_vocab(loaded, folder, rows).add_to_gguf(writer, quiet=True)
        for name, data in tensors:
            stored, raw_dtype = _stored(data, outtype)
            writer.add_tensor(name, stored, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=True)
        writer.close()
        os.replace(partial, out)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return ExportSummary(out, out.stat().st_size, len(tensors), pre)
