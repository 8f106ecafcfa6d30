"""Train a byte-level BPE tokenizer from scratch and encode chats with it.

The tokenizer is saved in Hugging Face format with a chat template, so vLLM,
transformers and reverie's own training all see the same token ids.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

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
    """Token ids of a chat in the tiny world's tag format, and the mask of the tokens the model is trained on
    (assistant replies and their end tags), without re-rendering the template.  ``chat_encoder`` picks this one or
    ``TemplateChatEncoder`` for a tokenizer."""

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

    def prompt_ids(self, messages: list[dict], role: str = "assistant") -> list[int]:
        """Token ids of ``messages`` followed by the opening of a ``role`` message: what the model continues to
        write that message."""
        return self.encode(messages)[0] + [self.role_ids[role]]

    def reply_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` as an assistant message the model writes after the generation prompt, the end of
        the message included."""
        return self.text_ids(" " + text) + [self.end_id]


class TemplateChatEncoder:
    """Token ids of a chat rendered by the tokenizer's own chat template (an instruct model's, such as ChatML),
    and the mask of the tokens the model is trained on: each assistant message's content and the token that ends
    it.  The ids are those vLLM serves (the template rendered to text and tokenized): the template's structure is
    tokenized with its special tokens, each message's content as text (``text_ids``), so a role tag a user writes
    never becomes structure.  Only templates that write each message's content as given are accepted."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast):
        if not tokenizer.chat_template:
            raise ValueError("the tokenizer has no chat template and is not the tiny world's")
        self.tok = tokenizer
        after = self.tok.encode(self._pieces([{"role": "assistant", "content": ""}])[-1][0], add_special_tokens=False)
        if not after:
            raise ValueError("the chat template writes nothing after an assistant message, so no token ends it")
        self.end_id = after[0]  # the token the template closes an assistant message with (ChatML: <|im_end|>)

    def text_ids(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False, split_special_tokens=True)

    def _pieces(self, messages: list[dict], open_role: str | None = None,
                add_generation_prompt: bool = False) -> list[tuple[str, dict | None]]:
        """The rendered chat cut at each message's content: (the template's text before it, the message), then
        (the text after the last content, None).  With ``open_role`` a message of that role is opened last and the
        text ends where its content would begin."""
        chat = list(messages) + ([{"role": open_role, "content": ""}] if open_role is not None else [])
        marks = [f"\x00reverie-content-{i}\x00" for i in range(len(chat))]
        text = self.tok.apply_chat_template([{**m, "content": k} for m, k in zip(chat, marks)], tokenize=False,
                                            add_generation_prompt=add_generation_prompt)
        pieces: list[tuple[str, dict | None]] = []
        for m, k in zip(chat, marks):
            before, found, text = text.partition(k)
            if not found or k in text:
                raise ValueError(f"the chat template does not write a {m['role']} message's content as given")
            pieces.append((before, m))
        if open_role is not None:
            return pieces[:-1] + [(pieces[-1][0], None)]
        return pieces + [(text, None)]

    def _ids(self, pieces: list[tuple[str, dict | None]]) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        mask: list[int] = []
        ends_reply = False  # the template's text after an assistant message begins with the token that ends it
        for structure, m in pieces:
            s = self.tok.encode(structure, add_special_tokens=False)
            ids += s
            mask += [int(ends_reply and j == 0 and t == self.end_id) for j, t in enumerate(s)]
            ends_reply = m is not None and m["role"] == "assistant"
            if m is not None:
                body = self.text_ids(m["content"])
                ids += body
                mask += [int(ends_reply)] * len(body)
        return ids, mask

    def encode(self, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        return self._ids(self._pieces(messages, add_generation_prompt=add_generation_prompt))

    def prompt_ids(self, messages: list[dict], role: str = "assistant") -> list[int]:
        if role == "assistant":
            return self.encode(messages, add_generation_prompt=True)[0]
        return self._ids(self._pieces(messages, open_role=role))[0]

    def reply_ids(self, text: str) -> list[int]:
        return self.text_ids(text) + [self.end_id]


class Encoder(Protocol):
    """What the learner, the scorers and the samplers use of a chat encoder."""
    tok: PreTrainedTokenizerFast
    end_id: int

    def text_ids(self, text: str) -> list[int]: ...
    def encode(self, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[int]]: ...
    def prompt_ids(self, messages: list[dict], role: str = "assistant") -> list[int]: ...
    def reply_ids(self, text: str) -> list[int]: ...


def chat_encoder(tokenizer: PreTrainedTokenizerFast) -> Encoder:
    """The encoder for ``tokenizer``: the tiny world's tag format where the tokenizer has its tags, else the
    tokenizer's own chat template."""
    vocab = tokenizer.get_vocab()
    if all(t in vocab for t in SPECIAL_TOKENS):
        return ChatEncoder(tokenizer)
    return TemplateChatEncoder(tokenizer)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast.from_pretrained(str(path))
