"""An offline CLIP tokenizer and a tiny CLIP text encoder for the toyvid world.

The tokenizer is byte-level BPE in CLIP's own format (vocab.json + merges.txt, words
end in "</w>"): every byte is a token, and merges make each word of the grammar one
token. Built in code, so nothing comes from a model hub.
"""
from __future__ import annotations

from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from vip.toyvid.world import vocabulary

SPECIAL = ("<|startoftext|>", "<|endoftext|>")
MAX_LENGTH = 12  # the longest grammar prompt is 10 words + BOS + EOS


def _tokenizer(words: list[str]) -> CLIPTokenizer:
    byte_chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in byte_chars + [c + "</w>" for c in byte_chars]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:  # a chain of merges per word, left to right
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left = left + right
            vocab.setdefault(left, len(vocab))
    for tok in SPECIAL:
        vocab.setdefault(tok, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)


def build_tokenizer() -> CLIPTokenizer:
    """BPE applies the lowest-ranked merge first, so one word's chain can be cut by a
    pair from another word ("ri" of "right" inside "triangle"); moving a word that
    splits to the front of the merge order fixes it, and this terminates quickly."""
    words = vocabulary()
    for _ in range(len(words)):
        tok = _tokenizer(words)
        split = [w for w in words if len(tok(w, add_special_tokens=False).input_ids) != 1]
        if not split:
            return tok
        words = split + [w for w in words if w not in split]
    raise RuntimeError(f"could not make one token of each grammar word: {split}")


def text_encoder_config(hidden: int = 64, layers: int = 2, heads: int = 2) -> CLIPTextConfig:
    tok = build_tokenizer()
    return CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def build_text_encoder(hidden: int = 64, layers: int = 2, heads: int = 2) -> CLIPTextModel:
    return CLIPTextModel(text_encoder_config(hidden, layers, heads))
