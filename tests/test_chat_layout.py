"""A chat model trained in its own chat template: the features are the template's rendering, the packed path equals
the classic one, the likelihood prior starts from the LM's own ranking, and chat, serve and eval follow the layout."""

from __future__ import annotations

import json

import pytest
import torch

from persona.configs import CHAT_TEMPLATE_LAYOUT, DataArguments, ModelArguments, PersonaTrainingArguments
from persona.data import prepare_corpus
from persona.data.conversation import conversation_messages
from persona.data.input_layouts import ChatTemplateLayout
from persona.data.layout import IGNORE_INDEX
from persona.model.dual_heads import DualPath, collator_for
from persona.model.loading import load_for_training
from persona.training.trainer import PersonaTrainer, dual_loss
from tests.conftest import CONVERSATIONS, load_folder, write_conversations

CHAT = ["--input_layout", "chat_template"]


def _corpus(tmp_path, tokenizer, num_candidates: int = 3):
    data = DataArguments(
        dataset_path=str(write_conversations(tmp_path / "chats.jsonl", CONVERSATIONS)),
        dataset_cache=str(tmp_path / "cache"),
        input_layout=CHAT_TEMPLATE_LAYOUT,
        eval_num_candidates=num_candidates,
    )
    return prepare_corpus(data, ChatTemplateLayout.for_tokenizer(tokenizer), max_positions=128, roles=("eval",))


def _loaded(folder, **fields):
    torch.manual_seed(0)
    model_args = ModelArguments(model_name_or_path=str(folder), **fields)
    return load_for_training(model_args, input_layout=CHAT_TEMPLATE_LAYOUT)


def test_template_features_are_the_tokenizers_own_rendering(plain_chat_model, tmp_path):
    loaded = _loaded(plain_chat_model)
    tokenizer, end_of_turn = loaded.tokenizer, tokenizer_eos(loaded)
    corpus = _corpus(tmp_path, tokenizer)
    turns = [(d["persona"], t) for d in corpus.dialogs["eval"] for t in d["turns"]]
    examples = list(corpus.features["eval"])
    assert len(examples) == len(turns) > 0
    batch = collator_for(DualPath.PACKED, loaded.ids, token_types=False, wrap_candidates=False)(examples)
    for row, ((persona, turn), example) in enumerate(zip(turns, examples)):
        messages = conversation_messages(persona, turn["history"])
        for candidate, block in zip(turn["candidates"], example["candidates"]):
            rendered = tokenizer.apply_chat_template(
                [*messages, {"role": "assistant", "content": candidate}], tokenize=True, return_dict=False
            )
            assert (
                example["prefix_ids"] + block
                == rendered[: rendered.index(end_of_turn, len(example["prefix_ids"])) + 1]
            )
        ids = batch["input_ids"][row].tolist()
        ends = batch["mc_token_ids"][row].tolist()
        assert [ids[end] for end in ends] == [end_of_turn] * len(
            example["candidates"]
        )  # the head reads the end of turn
        gold = example["candidates"][-1]
        labelled = [token for token in batch["labels"][row].tolist() if token != IGNORE_INDEX]
        assert labelled == gold[1:]  # the gold reply and its end-of-turn token, nothing else


def tokenizer_eos(loaded) -> int:
    assert loaded.ids.eos == loaded.tokenizer.convert_tokens_to_ids("<|end|>")
    return loaded.ids.eos


PRIORS = {
    "no prior": {},
    "mean log-likelihood": {"likelihood_prior": True},
    "PMI": {"likelihood_prior": True, "prior_pmi_weight": 0.5},
}


@pytest.mark.parametrize("prior", PRIORS)
def test_packed_equals_classic_in_the_template_layout(plain_chat_model, tmp_path, prior):
    loaded = _loaded(plain_chat_model, **PRIORS[prior])
    examples = list(_corpus(tmp_path, loaded.tokenizer).features["eval"])[:4]
    empty = loaded.layout.empty_prefix() if prior == "PMI" else None
    results = {}
    for path in (DualPath.CLASSIC, DualPath.PACKED):
        batch = collator_for(path, loaded.ids, token_types=False, wrap_candidates=False, empty_prefix=empty)(examples)
        output = loaded.model.eval()(**batch, dual_path=path)
        results[path] = (dual_loss(output, batch["mc_labels"], 1.0, 1.0)[0], output.mc_logits)
        if empty is not None:
            results[path] += (output.context_free_nll_sum,)
    for got, want in zip(results[DualPath.PACKED], results[DualPath.CLASSIC], strict=True):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def _log_likelihood(model, context: list[int], block: list[int]) -> float:
    """A candidate block's summed log-likelihood after ``context``, by one plain forward pass over both, the block's
    first token (the prompt's last) not scored."""
    log_probs = model.forward_full(input_ids=torch.tensor([[*context, *block]])).logits[0].float().log_softmax(-1)
    return sum(log_probs[len(context) + i - 1, block[i]].item() for i in range(1, len(block)))


@pytest.mark.parametrize("path", [DualPath.CLASSIC, DualPath.PACKED])
def test_the_pmi_prior_is_the_likelihood_after_the_conversation_less_a_weight_times_after_an_empty_one(
    plain_chat_model, tmp_path, path
):
    loaded = _loaded(plain_chat_model, likelihood_prior=True, prior_pmi_weight=0.5)
    empty = loaded.layout.empty_prefix()
    no_messages = [{"role": "system", "content": ""}]
    rendered = loaded.tokenizer.apply_chat_template(
        no_messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert list(empty) == rendered[:-1]  # a candidate's block starts with the prompt's last token
    examples = list(_corpus(tmp_path, loaded.tokenizer).features["eval"])[:3]
    batch = collator_for(path, loaded.ids, token_types=False, wrap_candidates=False, empty_prefix=empty)(examples)
    model = loaded.model.eval()
    with torch.no_grad():
        output = model(**batch, dual_path=path)
        for row, example in enumerate(examples):
            for c, block in enumerate(example["candidates"]):
                after_context = _log_likelihood(model, example["prefix_ids"], block)
                after_nothing = _log_likelihood(model, list(empty), block)
                assert -output.candidate_nll_sum[row, c].item() == pytest.approx(after_context, abs=1e-4)
                assert -output.context_free_nll_sum[row, c].item() == pytest.approx(after_nothing, abs=1e-4)
                # the untrained head scores zero and the prior's scale is 1: the score is the PMI per scored token
                pmi_per_token = (after_context - 0.5 * after_nothing) / (len(block) - 1)
                assert output.mc_logits[row, c].item() == pytest.approx(pmi_per_token, abs=1e-5)


@pytest.mark.parametrize(("prior", "ranking"), [("mean log-likelihood", "lm_hits@1"), ("PMI", "pmi_hits@1")])
def test_with_the_likelihood_prior_the_untrained_head_ranks_as_the_language_model(
    plain_chat_model, tmp_path, prior, ranking
):
    loaded = _loaded(plain_chat_model, **PRIORS[prior])
    assert loaded.model.persona_prior_scale.item() == 1.0
    corpus = _corpus(tmp_path, loaded.tokenizer, num_candidates=5)
    args = PersonaTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", per_device_eval_batch_size=3)
    metrics = PersonaTrainer(loaded, args, pmi_weight=0.5).evaluate(corpus.features["eval"])
    assert metrics["eval_hits@1"] == metrics[f"eval_{ranking}"] and metrics["eval_num_turns"] == len(
        corpus.features["eval"]
    )
    assert {"eval_lm_hits@1", "eval_pmi_hits@1"} <= set(metrics)


def test_a_copy_of_the_gold_reply_among_the_distractors_is_a_tie_whatever_the_batch():
    from persona.data.collator import PersonaCollator
    from persona.data.special_tokens import SpecialIds
    from persona.model.dual_heads import DualOutput
    from persona.training.trainer import turn_scores

    example = {"prefix_ids": [5, 6], "candidates": [[7, 8], [9], [7, 8]]}  # the gold reply [7, 8] twice
    batch = PersonaCollator(SpecialIds(1, 2, 3, 4, 0))([example])
    assert batch["gold_copies"].tolist() == [[True, False, True]]
    scores = torch.tensor([[1.0 - 1e-7, -5.0, 1.0]])  # the copy a hair below the gold, as packed rows can give
    output = DualOutput(
        nll_sum=torch.ones(1),
        tokens=torch.ones(1),
        mc_logits=scores,
        candidate_nll_sum=-scores,
        candidate_tokens=torch.ones(1, 3),
    )
    output.context_free_nll_sum = torch.zeros(1, 3)
    rank, lm_rank, pmi_rank = turn_scores(
        output, batch["mc_labels"], batch["candidate_valid"], batch["gold_copies"], pmi_weight=0.5
    )[0, [0, 5, 6]].tolist()
    # a tie counts as ranked above the gold: a miss, as the reference counts it
    assert rank == lm_rank == pmi_rank == 1


def test_the_head_learning_rate_gets_a_group_of_its_own(plain_chat_model, tmp_path):
    loaded = _loaded(plain_chat_model, likelihood_prior=True)
    args = PersonaTrainingArguments(
        output_dir=str(tmp_path), report_to="none", learning_rate=1e-4, head_learning_rate=1e-2
    )
    optimizer = PersonaTrainer(loaded, args).create_optimizer()
    head = {id(loaded.model.persona_prior_scale), *map(id, loaded.model.multiple_choice_head.parameters())}
    for group in optimizer.param_groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) == 1 and group["lr"] == (1e-2 if in_head == {True} else 1e-4)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == sum(
        p.requires_grad for p in loaded.model.parameters()
    )


def test_a_template_trained_model_keeps_its_own_template_and_layout(template_trained, plain_chat_model):
    from transformers import AutoTokenizer

    loaded = load_folder(template_trained)
    assert loaded.layout.name == CHAT_TEMPLATE_LAYOUT and not loaded.token_types and not loaded.prompted
    assert loaded.tokenizer.chat_template == AutoTokenizer.from_pretrained(plain_chat_model).chat_template
    config = json.loads((template_trained / "config.json").read_text())
    assert config["persona"]["layout"] == "chat_template" and config["persona"]["likelihood_prior"] is True
    assert "<bos>" not in loaded.tokenizer.get_vocab()  # no persona tokens added
    card = (template_trained / "README.md").read_text()
    assert "trained in this very chat template" in card and "<speaker2>" not in card


def test_chat_and_eval_of_a_template_trained_model_go_through_its_template(template_trained, tmp_path):
    from persona.commands.eval import main as eval_main
    from persona.data.chat_layout import generation_prompt
    from persona.model.decoding import Bot
    from persona.model.generation import DecodingArguments

    loaded = load_folder(template_trained)
    seen = []
    loaded.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    persona, history = ["i like cats."], ["hi!", "hello.", "what do you do?"]
    decoding = DecodingArguments(do_sample=False, max_length=4)
    assert isinstance(Bot(loaded, decoding, 2).reply(persona, history), str)
    assert seen[0]["input_ids"][0].tolist() == generation_prompt(loaded.tokenizer, persona, history)
    assert all("token_type_ids" not in inputs for inputs in seen)
    assert decoding.generation_config(loaded).eos_token_id == loaded.ids.eos
    argv = [
        "--model_name_or_path",
        str(template_trained),
        "--dataset_path",
        str(write_conversations(tmp_path / "c.jsonl", CONVERSATIONS)),
    ]
    argv += [
        "--dataset_cache",
        str(tmp_path / "cache"),
        "--output_dir",
        str(tmp_path / "eval"),
        "--eval_num_candidates",
        "3",
    ]
    assert eval_main([*argv, "--do_sample", "false", "--max_length", "4"]) == 0
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert results["input_layout"] == "chat_template" and "hits@1" in results and "prompted" not in results
    assert 0 <= results["ended"] <= 1 and results["num_turns"]["hits"] == 8


def test_serve_prompts_a_template_trained_model_through_its_template(template_trained):
    import httpx

    from persona.data.chat_layout import generation_prompt
    from persona.model.generation import DecodingArguments
    from persona.serving.server import ServeArguments, free_port, running_server

    persona, history = ["i like cats."], ["hi! what do you do?"]
    messages = [{"role": "system", "content": " ".join(persona)}, {"role": "user", "content": history[0]}]
    prompt = generation_prompt(load_folder(template_trained).tokenizer, persona, history)
    model_args, args = ModelArguments(model_name_or_path=str(template_trained)), ServeArguments(port=free_port())
    with running_server(model_args, DataArguments(), args, DecodingArguments()) as (url, _):
        body = {"messages": messages, "temperature": 0, "max_tokens": 6}
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["prompt_tokens"] == len(prompt)
    assert 1 <= answer.json()["usage"]["completion_tokens"] <= 6


def _labelled_corpus(tmp_path, tokenizer):
    data = DataArguments(
        dataset_path=str(write_conversations(tmp_path / "chats.jsonl", CONVERSATIONS)),
        dataset_cache=str(tmp_path / "cache"),
        input_layout=CHAT_TEMPLATE_LAYOUT,
        num_candidates=3,
        label_history=True,
        validation_split_size=1,
    )
    layout = ChatTemplateLayout.for_tokenizer(tokenizer)
    return prepare_corpus(data, layout, max_positions=128, roles=("train", "eval"))


def _runs(labels: list[int]) -> list[list[int]]:
    """The labelled tokens of a row in runs of consecutive positions."""
    runs, previous = [], IGNORE_INDEX
    for token in labels:
        if token != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(token)
        previous = token
    return runs


def test_label_history_labels_every_bot_reply_of_a_training_turn_as_sft_does(plain_chat_model, tmp_path):
    """With label_history, a training turn's LM labels are each of the bot's earlier replies in its history and the
    gold reply, each with its end-of-turn token (what SFT's assistant-only loss labels), on both paths; the held-out
    turns keep the gold reply alone, so that perplexity means the same."""
    loaded = _loaded(plain_chat_model)
    tokenizer, end_of_turn = loaded.tokenizer, tokenizer_eos(loaded)
    corpus = _labelled_corpus(tmp_path, tokenizer)
    turns = [t for d in corpus.dialogs["train"] for t in d["turns"]]
    examples = list(corpus.features["train"])
    assert len(examples) == len(turns) and any(len(t["history"]) > 1 for t in turns)
    for path in (DualPath.PACKED, DualPath.CLASSIC):
        batch = collator_for(path, loaded.ids, token_types=False, wrap_candidates=False)(examples)
        for row, (turn, example) in enumerate(zip(turns, examples)):
            labels = batch["labels"][row]
            labels = (labels[example_gold(example)] if path is DualPath.CLASSIC else labels).tolist()
            bot_replies = turn["history"][-2::-2][::-1]  # every other utterance back from the partner's last
            runs = _runs(labels)
            assert len(runs) == len(bot_replies) + 1, (path, row)
            for run, reply in zip(runs, [*bot_replies, turn["candidates"][-1]]):
                assert run[-1] == end_of_turn and tokenizer.decode(run[:-1]).strip() == reply.strip()
    held_out = collator_for(DualPath.PACKED, loaded.ids, token_types=False, wrap_candidates=False)(
        list(corpus.features["eval"])
    )
    assert all(len(_runs(row.tolist())) == 1 for row in held_out["labels"])


def example_gold(example: dict) -> int:
    return len(example["candidates"]) - 1


def test_with_label_history_the_lm_loss_is_every_bot_replys_mean_nll_on_both_paths(plain_chat_model, tmp_path):
    """The LM loss of a labelled batch is the mean NLL of every labelled token (the earlier bot replies and the gold
    one) as one plain forward pass over each turn's prefix and gold block computes it; packed equals classic."""
    loaded = _loaded(plain_chat_model)
    examples = [e for e in _labelled_corpus(tmp_path, loaded.tokenizer).features["train"] if e["label_spans"]][:4]
    assert examples
    model = loaded.model.eval()
    total, count = 0.0, 0
    for example in examples:
        ids = [*example["prefix_ids"], *example["candidates"][-1]]
        targets = set(range(len(example["prefix_ids"]) + 1, len(ids)))
        targets |= {i for start, end in example["label_spans"] for i in range(start, end)}
        log_probs = model.forward_full(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        total -= sum(log_probs[i - 1, ids[i]].item() for i in targets)
        count += len(targets)
    for path in (DualPath.PACKED, DualPath.CLASSIC):
        batch = collator_for(path, loaded.ids, token_types=False, wrap_candidates=False)(examples)
        output = model(**batch, dual_path=path)
        lm_loss = dual_loss(output, batch["mc_labels"], 1.0, 1.0)[1]
        assert lm_loss.item() == pytest.approx(total / count, abs=1e-4), path


def test_label_history_needs_the_chat_template_layout():
    from persona.errors import ConfigError

    with pytest.raises(ConfigError, match="label_history needs input_layout: chat_template"):
        DataArguments(label_history=True)


def test_chat_and_serve_prompt_a_chat_model_persona_never_trained(plain_chat_model, monkeypatch, capsys):
    """persona-chat and persona-serve take a plain chat model (no persona tokens, a chat template) as persona-eval
    does, prompted through its template: a user talks to the model before training as after."""
    import io

    import httpx

    from persona.commands.chat import main as chat_main
    from persona.data.chat_layout import generation_prompt
    from persona.model.generation import DecodingArguments
    from persona.serving.server import ServeArguments, free_port, running_server

    persona, history = ["i like cats."], ["hi! what do you do?"]
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"persona": persona, "history": history}) + "\n"))
    argv = ["--model_name_or_path", str(plain_chat_model), "--json", "--do_sample", "false", "--max_length", "4"]
    assert chat_main(argv) == 0
    assert isinstance(json.loads(capsys.readouterr().out.splitlines()[-1])["reply"], str)
    prompt = generation_prompt(load_folder(plain_chat_model).tokenizer, persona, history)
    messages = [{"role": "system", "content": persona[0]}, {"role": "user", "content": history[0]}]
    model_args, args = ModelArguments(model_name_or_path=str(plain_chat_model)), ServeArguments(port=free_port())
    with running_server(model_args, DataArguments(), args, DecodingArguments()) as (url, _):
        body = {"messages": messages, "temperature": 0, "max_tokens": 4}
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["prompt_tokens"] == len(prompt)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from tests.conftest import needs_shared

    folder = needs_shared("models", "smollm2-135m-instruct")
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_blocks_between_the_templates_wrapper_are_the_full_renders_features(
    which, plain_chat_model, smollm2_tokenizer, tmp_path, monkeypatch
):
    """The shared CSV prepared in the chat template (label spans included) with each reply's own tokens between the
    template's wrapper gives the very features of rendering every reply in the whole conversation."""
    import csv

    from transformers import AutoTokenizer

    from persona.data import chat_layout
    from tests.conftest import needs_shared

    tokenizer = smollm2_tokenizer if which == "smollm2" else AutoTokenizer.from_pretrained(plain_chat_model)
    assert chat_layout.reply_wrapper(tokenizer) is not None
    source = tmp_path / "spc.csv"
    with open(needs_shared("data", "spc", "Synthetic-Persona-Chat_valid.csv"), newline="") as handle:
        rows = [row for _, row in zip(range(10), csv.DictReader(handle))]
    with open(source, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def features(cache: str):
        data = DataArguments(
            dataset_path=str(source),
            dataset_cache=str(tmp_path / cache),
            input_layout=CHAT_TEMPLATE_LAYOUT,
            num_candidates=8,
            label_history=True,
            validation_split_size=2,
            max_input_length=160,  # some turns lose history to fit
        )
        corpus = prepare_corpus(data, ChatTemplateLayout.for_tokenizer(tokenizer), max_positions=2048)
        return {role: corpus.features[role].to_list() for role in ("train", "eval")}

    fast = features("fast")
    monkeypatch.setattr(chat_layout, "reply_wrapper", lambda tokenizer: None)
    whole = features("whole")
    assert fast == whole and any(row["truncated"] for row in fast["train"])
    assert any(row["label_spans"] for row in fast["train"])


def test_replies_the_wrapper_does_not_vouch_for_are_rendered_whole(smollm2_tokenizer):
    from persona.data import chat_layout

    tokenizer = smollm2_tokenizer
    messages = conversation_messages(["i like cats."], ["hi!"])
    prompt = chat_layout.generation_prompt(tokenizer, ["i like cats."], ["hi!"])
    replies = [" spaced ", "two\nlines", "plain reply.", "<|im_end|> forged"]
    specials = set(tokenizer.all_special_ids)
    expected = [chat_layout._reply_block(tokenizer, messages, prompt, reply, specials) for reply in replies]
    assert chat_layout.reply_blocks(tokenizer, messages, prompt, replies) == expected


def test_prompts_rendered_in_one_batch_are_each_ones_own_render(smollm2_tokenizer, plain_chat_model):
    from transformers import AutoTokenizer

    from persona.data import chat_layout
    from persona.data.readers import WHOLE_FILE
    from persona.data.sources import read_corpus
    from tests.conftest import QUICKSTART

    dialogs = read_corpus(str(QUICKSTART / "train_conversations.jsonl"))[WHOLE_FILE][:6]
    chats = [(d["persona"], t["history"]) for d in dialogs for t in d["turns"]]
    for tokenizer in (smollm2_tokenizer, AutoTokenizer.from_pretrained(plain_chat_model)):
        batched = chat_layout.generation_prompts(tokenizer, chats)
        assert len(batched) == len({str(chat) for chat in chats}) > 20
        for persona, history in chats:
            single = chat_layout.generation_prompt(tokenizer, persona, history)
            assert batched[(tuple(persona), tuple(history))] == single
