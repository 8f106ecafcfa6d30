"""Train a byte-level BPE tokenizer from scratch and encode chats with it.

The tokenizer is saved in Hugging Face format with a chat template, so vLLM,
transformers and reverie's own training all see the same token ids.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ROLES = ("system", "user", "assistant", "tool")
END = "<|end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [PAD, END, *(f"<|{r}|>" for r in ROLES)]
# Each message is its role tag, a space, the content and the end tag; the
# generation prompt is the assistant tag alone.  encode_chat() mirrors this.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


# Invented consonant-vowel words (``mopi``) are split into their two syllables
# before BPE, so every such word, seen in pretraining or not, is made of the
# same 140 trained syllable tokens.  Measured on the tiny world: learning is
# faster and unseen words are copied from context far more reliably than with
# whole-word BPE pieces.
SYLLABLE_SPLIT = Regex(" [bdfgklmnprstvz][aeiou](?=[bdfgklmnprstvz][aeiou](?![a-z]))")


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(SYLLABLE_SPLIT, behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=END,
        pad_token=PAD,
        additional_special_tokens=[f"<|{r}|>" for r in ROLES],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


class ChatEncoder:
    """Token ids of a chat and the mask of the tokens the model is trained on
    (assistant replies and their end tags), without re-rendering the template."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast):
        self.tok = tokenizer
        self.role_ids = {r: tokenizer.convert_tokens_to_ids(f"<|{r}|>") for r in ROLES}
        self.end_id = tokenizer.convert_tokens_to_ids(END)

    def text_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` as text: a role tag or an end tag written inside it (a user's prompt, a rule
        given as feedback) is spelled out in ordinary tokens and never becomes structure."""
        return self.tok.encode(text, add_special_tokens=False, split_special_tokens=True)

    def encode(self, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        mask: list[int] = []
        for m in messages:
            body = self.text_ids(" " + m["content"])
            trained = int(m["role"] == "assistant")
            ids += [self.role_ids[m["role"]], *body, self.end_id]
            mask += [0] + [trained] * (len(body) + 1)
        if add_generation_prompt:
            ids.append(self.role_ids["assistant"])
            mask.append(0)
        return ids, mask


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(path))
