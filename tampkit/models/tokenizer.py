"""An in-process byte-level tokenizer for the tiny aliases: no files, no hub, built in milliseconds.

Every UTF-8 byte is one token (GPT-2's byte-to-unicode alphabet, no merges), plus the special
tokens a family needs. Sequences are long, which is what we want for exercising token statistics.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tampkit.models.adapters import FALLBACK_CHAT_TEMPLATE

BASE_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def byte_tokenizer(extra_specials: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A 256-symbol byte tokenizer with ChatML specials and any family tokens appended."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(BASE_SPECIALS[1:]) + list(extra_specials)})
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer
