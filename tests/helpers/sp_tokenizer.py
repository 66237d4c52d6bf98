"""A Llama-style SentencePiece tokenizer trained locally in a second (the real ALMA/LLaMA-2 tokenizer's shape:
BPE with byte fallback, a dummy prefix '▁', <s>/</s>/<unk>), wrapped as transformers' Llama tokenizers."""
from __future__ import annotations

import io
from pathlib import Path

SENTENCES = [f"the {a} sees {b} dogs and {c} cats near the river {i}" for i, (a, b, c) in enumerate(
    [("man", "two", "three"), ("woman", "five", "seven"), ("child", "nine", "eleven")] * 60)]
SENTENCES += [f"der {a} sieht {b} Hunde am Fluss {i}"
              for i, (a, b) in enumerate([("Mann", "zwei"), ("Frau", "fünf")] * 60)]
SENTENCES += ["Translate this from German to English:\nGerman: der Mann\nEnglish: the man",
              "Translate this from English to German:\nEnglish: the man\nGerman: der Mann"] * 20


def train_sentencepiece(folder: Path, vocab_size: int = 400) -> Path:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        character_coverage=1.0, minloglevel=2, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity",
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


def llama_tokenizer(folder: Path, fast: bool = True):
    """The trained model as LlamaTokenizerFast (or the slow LlamaTokenizer), saved in ``folder`` and reloaded."""
    from transformers import LlamaTokenizer, LlamaTokenizerFast

    sp = train_sentencepiece(folder)
    slow = LlamaTokenizer(vocab_file=str(sp), legacy=True, add_bos_token=True, add_eos_token=False)
    if not fast:
        return slow
    tok = LlamaTokenizerFast(vocab_file=str(sp), legacy=True, from_slow=True, add_prefix_space=True)
    tok.save_pretrained(folder)
    return LlamaTokenizerFast.from_pretrained(folder)
