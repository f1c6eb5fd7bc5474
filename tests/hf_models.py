"""Tiny random-init Hugging Face models, saved locally (safetensors + tokenizer.json) for fast tests."""

from __future__ import annotations

from pathlib import Path

from edgetx.models.data import load_split

VOCAB = 384
SPECIALS = ["<|endoftext|>", "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _corpus(n_bytes: int = 200_000) -> list[str]:
    text = load_split("val")[:n_bytes].tobytes().decode("utf-8", "replace")
    return text.splitlines()


def byte_level_tokenizer():
    """A GPT-2-style byte-level BPE trained on held-out stdlib text, as a transformers fast tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    tk = ByteLevelBPETokenizer()
    tk.train_from_iterator(_corpus(), vocab_size=VOCAB, special_tokens=SPECIALS[:1], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=tk._tokenizer, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", model_input_names=["input_ids", "attention_mask"])


def wordpiece_tokenizer():
    """A BERT-style WordPiece tokenizer ([CLS] ... [SEP]) trained on held-out stdlib text."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    tk = BertWordPieceTokenizer(lowercase=True)
    tk.train_from_iterator(_corpus(), vocab_size=VOCAB, special_tokens=SPECIALS[1:], show_progress=False)
    return BertTokenizerFast(tokenizer_object=tk._tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                             cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def roberta_tokenizer():
    """A RoBERTa-style byte-level BPE (<s> ... </s>, <pad> = 1) trained on held-out stdlib text."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tk = ByteLevelBPETokenizer()
    tk.train_from_iterator(_corpus(), vocab_size=VOCAB, special_tokens=specials, show_progress=False)
    tk._tokenizer.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(tokenizer_object=tk._tokenizer, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                   model_input_names=["input_ids", "attention_mask"])


# encoder-only families: model_type -> (tokenizer, config overrides beyond the common tiny sizes)
ENCODERS = {
    "bert": ("wordpiece", {}),
    "roberta": ("roberta", {}),
    "xlm-roberta": ("roberta", {}),
    "camembert": ("roberta", {}),
    "mpnet": ("roberta", {}),
    "distilbert": ("wordpiece", {"dim": 64, "hidden_dim": 128, "n_layers": 2, "n_heads": 4}),
    "electra": ("wordpiece", {"embedding_size": 32}),
    "albert": ("wordpiece", {"embedding_size": 32}),
    "deberta-v2": ("wordpiece", {"type_vocab_size": 2, "relative_attention": True, "position_buckets": 32,
                                 "pos_att_type": ["p2c", "c2p"], "max_relative_positions": -1}),
    "modernbert": ("wordpiece", {"pad_token_id": 0, "cls_token_id": 2, "sep_token_id": 3, "bos_token_id": 2,
                                 "eos_token_id": 3, "global_attn_every_n_layers": 2, "local_attention": 16}),
    # its convolutions reach across padding into real tokens: not padding-invariant in PyTorch itself
    "convbert": ("wordpiece", {"embedding_size": 64, "head_ratio": 2, "conv_kernel_size": 9}),
}
PADDING_VARIANT = ("convbert",)


def tiny_encoder_config(model_type: str):
    """A random-init-sized config (hidden 64, 2 layers) of an encoder-only model type."""
    import transformers as tf

    _, overrides = ENCODERS[model_type]
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256)
    if model_type == "distilbert":
        common = dict(vocab_size=VOCAB, max_position_embeddings=256)
    return tf.AutoConfig.for_model(model_type, **common, **overrides)


def save_tiny_encoder(model_type: str, folder: Path, head: str | None = None, labels: tuple[str, ...] = ()) -> Path:
    """Write a random-init encoder of `model_type` (bare, or with a "sequence" / "token" classification
    head over `labels`) and its tokenizer to `folder`."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    config = tiny_encoder_config(model_type)
    if head:
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
    auto = {None: tf.AutoModel, "sequence": tf.AutoModelForSequenceClassification,
            "token": tf.AutoModelForTokenClassification}[head]
    model = auto.from_config(config)
    with torch.no_grad():  # larger head weights: labels decided by clear margins, not float noise
        for name, param in model.named_parameters():
            if "classifier" in name and name.endswith("weight"):
                param.normal_(0, 1.0)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer = wordpiece_tokenizer() if ENCODERS[model_type][0] == "wordpiece" else roberta_tokenizer()
    tokenizer.save_pretrained(folder)
    return folder


def tiny_config(family: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256)
    if family == "llama":
        return tf.LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False)
    if family == "qwen2":
        return tf.Qwen2Config(**common, num_key_value_heads=2)
    if family == "mistral":
        return tf.MistralConfig(**common, num_key_value_heads=2, sliding_window=4096)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256)
    if family == "bert":
        return tf.BertConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=256)
    raise ValueError(family)


def save_tiny(family: str, folder: Path, sentence_transformers: bool = True) -> Path:
    """Write a random-init model of `family` with its tokenizer to `folder`."""
    import json

    import torch
    import transformers as tf

    torch.manual_seed(0)
    config = tiny_config(family)
    config.architectures = None
    if family == "bert":
        model = tf.BertModel(config)
        tokenizer = wordpiece_tokenizer()
    else:
        tokenizer = byte_level_tokenizer()
        config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
        model = tf.AutoModelForCausalLM.from_config(config)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    if family == "bert" and sentence_transformers:  # ask for mean pooling + normalize, like MiniLM
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling/config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    return folder


def save_big_decoder(folder: Path, embedding_std: float | None = None, **shape) -> int:
    """A random-init Qwen2 of `shape` with the byte-level tokenizer at `folder`; returns its fp32 weight bytes.

    With `embedding_std`, the embedding is drawn at that scale and an untied lm_head is a copy of it (a tied one
    is it): a random lm_head gives a near-uniform next-token distribution whose top two logits any rounding
    swaps, a gate nobody could pass; this way the residual stream's own token decides the argmax by a wide
    margin, as in a trained model, and a quantization gate measures quantization rather than ties."""
    import gc

    import torch
    import transformers as tf

    torch.manual_seed(0)
    tokenizer = byte_level_tokenizer()
    config = tf.Qwen2Config(**{"max_position_embeddings": 4096, **shape}, bos_token_id=tokenizer.eos_token_id,
                            eos_token_id=tokenizer.eos_token_id)
    config.architectures = ["Qwen2ForCausalLM"]
    with torch.no_grad():
        model = tf.Qwen2ForCausalLM(config)
        if embedding_std is not None:
            model.model.embed_tokens.weight.normal_(0.0, embedding_std)
            if model.lm_head.weight is not model.model.embed_tokens.weight:
                model.lm_head.weight.copy_(model.model.embed_tokens.weight)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())  # a tied weight counts once
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    del model
    gc.collect()
    return nbytes


# encoder-decoder families (text to text): model_type -> config overrides beyond the common tiny sizes
_SEQ2SEQ_COMMON = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=256)
SEQ2SEQ = {
    "bart": _SEQ2SEQ_COMMON,
    "mbart": _SEQ2SEQ_COMMON,
    "marian": _SEQ2SEQ_COMMON,
    "pegasus": _SEQ2SEQ_COMMON,
    "t5": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4),
}


def save_tiny_seq2seq(model_type: str, folder: Path) -> Path:
    """Write a random-init encoder-decoder of `model_type` (…ForConditionalGeneration) with the RoBERTa-style
    tokenizer (<s> 0, <pad> 1, </s> 2) to `folder`; the decoder starts from </s>, as BART's does."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    config = tf.AutoConfig.for_model(model_type, vocab_size=VOCAB, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                                     decoder_start_token_id=2, forced_eos_token_id=None, **SEQ2SEQ[model_type])
    model = tf.AutoModelForSeq2SeqLM.from_config(config)
    with torch.no_grad():  # a random model would often end at once: make the end token unlikely, outputs long
        model.get_output_embeddings().weight[config.eos_token_id] = 0.0
        if getattr(model, "final_logits_bias", None) is not None:
            model.final_logits_bias[..., config.eos_token_id] = -10.0
    model.config.architectures = [type(model).__name__]
    model.generation_config.forced_eos_token_id = None
    model.save_pretrained(folder, safe_serialization=True)
    roberta_tokenizer().save_pretrained(folder)
    return folder
