"""persona: GPT-2-family (and any causal) language models fine-tuned into persona chatbots, the TransferTransfo way.

One name per idea, across the package:

- **dataset format** (``dataset_format``): how a corpus file is written (PersonaChat JSON, ParlAI text,
  conversations, a Hub dataset); :mod:`persona.data.readers` reads each into **dialogs**: a persona (sentences) and
  the **turns** of one bot side of a conversation, each turn a history and its **candidates**, the gold reply last.
- **input layout** (``input_layout``): how a turn becomes token ids, the reference's (``reference``) or the model's
  chat template (``chat_template``): a :class:`~persona.data.input_layouts.Layout`, chosen once where the model is
  loaded. A stored example is a **prefix** (persona and history) and its candidates (replies, or whole blocks).
- **facts** (:class:`~persona.model.facts.PersonaFacts`): what training decided and saved in the model's config
  (its layout, token types, leading space, likelihood prior), read back in one place.
- ``loaded``: a :class:`~persona.model.loading.LoadedModel` (the model, its tokenizer, layout and facts);
  ``corpus``: a :class:`~persona.data.prepare.PreparedCorpus` (features and dialogs from the Arrow cache).
- **token types**: speaker embeddings added at every position (the reference layout only); ``use_token_types`` asks,
  ``LoadedModel.token_types`` is what the model is fed, ``PersonaFacts.token_types`` what it was trained with.
- lengths: ``max_positions`` is the model's (its position embeddings); ``max_input_length`` the longest input a
  corpus is prepared into (at most ``max_positions``); ``max_length`` the most tokens of a generated reply (the
  reference's ``interact.py`` name, in :class:`~persona.model.generation.DecodingArguments`).
"""
