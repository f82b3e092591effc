"""The tokenizer files of a Hugging Face export: `vocab.txt`, `tokenizer.json` (our WordPiece
pipeline plus BERT's `[CLS] a [SEP] b [SEP]` template), `tokenizer_config.json` and
`special_tokens_map.json`, so `AutoTokenizer.from_pretrained(out)` encodes as we do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, processors

from bipft_jax.data.tokenizer import SPECIAL_TOKENS, BertTokenizer

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")  # fmt: skip


def write_tokenizer(vocab_file: str | Path, out: Path, vocab_size: int, max_length: int) -> None:
    """Write the tokenizer files of ``vocab_file`` into ``out``; the vocab must fit the model's
    ``vocab_size`` embedding rows (raises ValueError naming both)."""
    bert = BertTokenizer.from_vocab(vocab_file)  # checks the file and the special tokens
    if bert.vocab_size > vocab_size:
        raise ValueError(
            f"vocab file {vocab_file} has {bert.vocab_size} tokens but the model embeds only "
            f"{vocab_size}: it is not this model's vocabulary"
        )
    shutil.copyfile(vocab_file, out / "vocab.txt")
    tok = Tokenizer.from_str(bert.backend.to_str())
    cls, sep = ("[CLS]", bert.cls_id), ("[SEP]", bert.sep_id)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[cls, sep]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.save(str(out / "tokenizer.json"))
    names = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
    special = dict(zip(names, SPECIAL_TOKENS))
    tok_cfg = {
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "strip_accents": None,
        "tokenize_chinese_chars": True, "model_max_length": max_length,
        "clean_up_tokenization_spaces": True, **special,
    }  # fmt: skip
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
