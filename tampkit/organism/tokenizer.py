"""The organism's tokenizer: one token per word of the scene language, built in-process.

Every answer is then exactly one token followed by `<|im_end|>`, so a small model learns the task
and not spelling; words outside the language map to `<unk>`.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tampkit.models.adapters import FALLBACK_CHAT_TEMPLATE
from tampkit.organism.questions import vocabulary

SPECIALS = ("<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>", "<image>")


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Specials first (ids 0..4), then the sorted vocabulary; ChatML chat template."""
    vocab = {token: i for i, token in enumerate([*SPECIALS, *vocabulary()])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<unk>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<image>"]})
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer
