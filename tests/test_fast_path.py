"""The dual loss and the packed fast path against independent reference computations."""

from __future__ import annotations

import pytest
import torch

from persona.configs import FORWARD_MODES
from persona.data.layout import build_candidate, build_prefix, token_types
from persona.data.special_tokens import special_ids
from persona.model.dual_heads import DualPath, choose_dual_path, collator_for
from persona.training.trainer import dual_loss

PACKED, FULL_SEQUENCES, CLASSIC = DualPath.PACKED, DualPath.FULL_SEQUENCES, DualPath.CLASSIC


def _examples(tokenizer):
    ids = special_ids(tokenizer)
    g = torch.Generator().manual_seed(1)
    rand = lambda n: torch.randint(5, 600, (n,), generator=g).tolist()  # noqa: E731
    return [
        {
            "prefix_ids": build_prefix([rand(5), rand(3)], [rand(4), rand(2), rand(6)], ids),
            "candidates": [rand(3), rand(7), rand(5)],
        },
        {"prefix_ids": build_prefix([rand(2)], [rand(9)], ids), "candidates": [rand(4), rand(2), rand(1)]},
        {
            "prefix_ids": build_prefix([rand(4), rand(4)], [], ids),
            "candidates": [rand(6), rand(3)],
        },  # fewer candidates: a padded slot
    ]


def test_logged_loss_equals_weighted_reference_losses(tiny_model, tokenizer):
    batch = collator_for(CLASSIC, special_ids(tokenizer))(_examples(tokenizer)[:2])
    output = tiny_model(**batch, dual_path=CLASSIC)
    loss, lm, mc = dual_loss(output, batch["mc_labels"], lm_coef=2.0, mc_coef=0.5)
    reference = tiny_model.forward_full(
        input_ids=batch["input_ids"],
        token_type_ids=batch["token_type_ids"],
        attention_mask=batch["attention_mask"],
        mc_token_ids=batch["mc_token_ids"],
        labels=batch["labels"],
        mc_labels=batch["mc_labels"],
    )
    assert torch.allclose(lm, reference.loss, atol=1e-6)
    assert torch.allclose(mc, reference.mc_loss, atol=1e-6)
    assert torch.allclose(loss, 2.0 * reference.loss + 0.5 * reference.mc_loss, atol=1e-6)


def _losses_logits_and_gradients(model, tokenizer, paths, coefs) -> dict:
    results = {}
    for path in paths:
        model.zero_grad()
        batch = collator_for(path, special_ids(tokenizer))(_examples(tokenizer))
        output = model(**batch, dual_path=path)
        loss, lm, mc = dual_loss(output, batch["mc_labels"], *coefs)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[path] = (loss.detach(), lm.detach(), output.mc_logits.detach(), grads)
    return results


def test_logits_made_in_chunks_give_the_same_losses_and_gradients(tiny_llama, tokenizer, monkeypatch):
    """The vocabulary's logits made a few positions at a time (and made again in the backward pass) change no loss,
    logit or gradient of the packed path."""
    from persona.model import dual_heads

    whole = _losses_logits_and_gradients(tiny_llama, tokenizer, (PACKED,), (2.0, 1.0))[PACKED]
    tiny_llama.zero_grad()
    monkeypatch.setattr(dual_heads, "LOGIT_CHUNK", 4)
    chunked = _losses_logits_and_gradients(tiny_llama, tokenizer, (PACKED,), (2.0, 1.0))[PACKED]
    for got, want in zip(chunked, whole):
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("model_name", ["tiny_model", "tiny_llama"])
@pytest.mark.parametrize(("coefs", "attention"), [((1.0, 1.0), "sdpa"), ((2.0, 0.5), "eager")])
def test_packed_equals_classic_losses_logits_and_gradients(model_name, request, tokenizer, coefs, attention):
    """The packed fast path against the classic one, under both attention implementations that take its mask."""
    tiny_model = request.getfixturevalue(model_name)
    tiny_model.set_attn_implementation(attention)
    assert tiny_model.config._attn_implementation == attention and tiny_model.packs()
    assert FORWARD_MODES == (PACKED, CLASSIC)
    assert choose_dual_path(tiny_model, PACKED) == PACKED and choose_dual_path(tiny_model, CLASSIC) == CLASSIC
    results = _losses_logits_and_gradients(tiny_model, tokenizer, (CLASSIC, PACKED, FULL_SEQUENCES), coefs)
    reference = results[CLASSIC]
    for key in (PACKED, FULL_SEQUENCES):
        for got, want in zip(results[key], reference):
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), key
    assert reference[2][2, 2] == torch.finfo(torch.float32).min  # the padded candidate slot never wins


def test_openai_gpt_runs_full_sequences_with_lm_logits_only_where_labels_are(tiny_openai_gpt, tokenizer):
    """openai-gpt's attention takes no custom mask: its fast path is the classic layout, its results the classic
    path's."""
    assert not tiny_openai_gpt.packs()
    assert choose_dual_path(tiny_openai_gpt, PACKED) == FULL_SEQUENCES
    results = _losses_logits_and_gradients(tiny_openai_gpt, tokenizer, (CLASSIC, FULL_SEQUENCES), (1.0, 1.0))
    for got, want in zip(results[FULL_SEQUENCES], results[CLASSIC]):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_causal_lm_classic_path_equals_the_base_model_with_types_in_the_embeddings(tiny_llama, tokenizer):
    """Any causal LM: the LM loss is the base model's own loss on the gold sequences, token types added
    to the word embeddings; the multiple-choice logits are the head on the hidden state at mc_token_ids."""
    from transformers import LlamaForCausalLM

    batch = collator_for(CLASSIC, special_ids(tokenizer))(_examples(tokenizer)[:2])
    output = tiny_llama(**batch, dual_path=CLASSIC)
    _, lm, _ = dual_loss(output, batch["mc_labels"], 1.0, 1.0)
    rows = torch.arange(2)
    gold = {
        name: batch[name][rows, batch["mc_labels"]]
        for name in ("input_ids", "token_type_ids", "attention_mask", "labels")
    }
    embed = tiny_llama.get_input_embeddings()
    plain = LlamaForCausalLM.forward(
        tiny_llama,
        inputs_embeds=embed(gold["input_ids"]) + embed(gold["token_type_ids"]),
        attention_mask=gold["attention_mask"],
        labels=gold["labels"],
        output_hidden_states=True,
    )
    assert torch.allclose(lm, plain.loss, atol=1e-6)
    last = plain.hidden_states[-1][rows, batch["mc_token_ids"][rows, batch["mc_labels"]]]
    expected = tiny_llama.multiple_choice_head.summary(last).squeeze(-1)
    assert torch.allclose(output.mc_logits[rows, batch["mc_labels"]], expected, atol=1e-5)


@pytest.mark.parametrize("model_name", ["tiny_model", "tiny_llama", "tiny_openai_gpt"])
def test_every_path_scores_each_candidate_as_its_own_full_sequence(model_name, request, tokenizer):
    """Likelihood ranking: each candidate's summed token NLL and count (the reply and its <eos>), from every path,
    equal a plain forward of that candidate's whole sequence."""
    model = request.getfixturevalue(model_name)
    examples = _examples(tokenizer)
    ids = special_ids(tokenizer)
    paths = (CLASSIC, FULL_SEQUENCES, PACKED) if model.packs() else (CLASSIC, FULL_SEQUENCES)
    for path in paths:
        batch = collator_for(path, special_ids(tokenizer))(examples)
        with torch.no_grad():
            output = model(**batch, dual_path=path)
        for b, example in enumerate(examples):
            for c, reply in enumerate(example["candidates"]):
                sequence = [*example["prefix_ids"], ids.speaker1, *reply, ids.eos]
                with torch.no_grad():
                    logits = model.forward_full(
                        input_ids=torch.tensor([sequence]),
                        token_type_ids=torch.tensor([token_types(sequence, ids).tolist()]),
                    ).logits
                log_probs = torch.log_softmax(logits[0, :-1].float(), -1)
                nll = -sum(
                    log_probs[t, sequence[t + 1]].item() for t in range(len(example["prefix_ids"]), len(sequence) - 1)
                )
                assert output.candidate_tokens[b, c].item() == len(reply) + 1, (path, b, c)
                assert output.candidate_nll_sum[b, c].item() == pytest.approx(nll, rel=1e-4, abs=1e-4), (path, b, c)


def test_pmi_in_the_reference_layout_scores_each_candidate_after_bos_alone(tiny_model, tokenizer):
    """The context-free batch of the reference layout: each candidate ``<speaker1> reply <eos>`` after ``<bos>``, with
    its token types, scored as one plain forward pass over ``<bos>`` and the candidate scores it, on both paths."""
    from persona.data.input_layouts import ReferenceLayout

    layout = ReferenceLayout.for_tokenizer(tokenizer)
    ids, empty = layout.ids, layout.empty_prefix()
    assert empty == (ids.bos,)
    examples = _examples(tokenizer)
    for path in (CLASSIC, PACKED):
        with torch.no_grad():
            output = tiny_model(**collator_for(path, ids, empty_prefix=empty)(examples), dual_path=path)
        for row, example in enumerate(examples):
            for c, reply in enumerate(example["candidates"]):
                sequence = [ids.bos, *build_candidate(reply, ids)]
                logits = tiny_model.forward_full(
                    input_ids=torch.tensor([sequence]),
                    token_type_ids=torch.from_numpy(token_types(sequence, ids))[None],
                ).logits[0]
                log_probs = logits.float().log_softmax(-1)
                # the speaker token is not scored; the reply and its <eos> are
                want = sum(log_probs[i - 1, sequence[i]].item() for i in range(2, len(sequence)))
                assert -output.context_free_nll_sum[row, c].item() == pytest.approx(want, abs=1e-4)
