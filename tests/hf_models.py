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
