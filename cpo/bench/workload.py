"""What every implementation runs on: model shapes, the tokenizer, the pairs and the pre-collated batches."""

from __future__ import annotations

import contextlib
import random
import statistics
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from cpo.bench.lengths import SRC, TGT, length_matched_examples
from cpo.data import Collator, EncodedPair, PairEncoder, PreferenceExample, WindowBatchSampler, format_prompt

LOSSES = ("sft", "cpo", "dpo_live", "dpo_cached")
LENGTHS = ("demo", "alma_r", "alma_r_max")  # demo sentences; ALMA-R's length distribution; every pair at its bounds


@dataclass(frozen=True)
class ModelSpec:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int | None = None  # None: the tokenizer's


MODELS = {
    "demo": ModelSpec(128, 2, 4, 2, 512),  # the embedded demo's model
    "h256": ModelSpec(256, 4, 8, 8, 1024),
    "tiny": ModelSpec(32, 2, 4, 2, 128),  # tests only
    # The real shapes of the GPU check (scripts/gpu_check.py), random-initialised, LLaMA-2's 32000 vocabulary.
    "1b": ModelSpec(2048, 22, 32, 4, 5632, 32000),  # TinyLlama
    "7b": ModelSpec(4096, 32, 32, 32, 11008, 32000),  # LLaMA-2-7B, ALMA-7B
    "13b": ModelSpec(5120, 40, 40, 40, 13824, 32000),  # LLaMA-2-13B, ALMA-13B
    "8b": ModelSpec(4096, 32, 32, 8, 14336, 128256),  # Llama-3-8B: the large-vocabulary part of the GPU check
    # Their stand-ins in the GPU check's CPU dry run: same head layout (GQA for 1b), same vocabulary.
    "dry_1b": ModelSpec(64, 2, 4, 1, 176, 32000),
    "dry_7b": ModelSpec(64, 2, 4, 4, 172, 32000),
    "dry_13b": ModelSpec(80, 2, 5, 5, 216, 32000),
    "dry_8b": ModelSpec(64, 2, 4, 1, 224, 128256),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def make_examples(n: int, seed: int = 0) -> list[PreferenceExample]:
    """Demo (Zorbish -> English) pairs: chosen = the correct translation, rejected = a flawed one."""
    from cpo.demo.language import FLAWS, apply_flaw, sample_sentences
    from cpo.demo.systems import DEFAULT_SYSTEMS

    out = []
    for s in sample_sentences(n, seed):
        rejected = next((t for sys_ in DEFAULT_SYSTEMS for t in sys_.translate([s], seed) if t != s.translation), None)
        if rejected is None:
            rng = random.Random(f"{seed}:{s.source}")
            rejected = apply_flaw(s.translation, rng.choice(FLAWS), rng)
        out.append(PreferenceExample(s.source, s.translation, rejected, SRC, TGT))
    return out


def build_tokenizer(seed: int = 0, vocab_size: int = 1000):
    from cpo.demo.language import sample_sentences
    from cpo.train.tiny import train_bpe_tokenizer

    sents = sample_sentences(1500, seed + 1)
    texts = [s.source for s in sents] + [s.translation for s in sents] + [format_prompt("x", SRC, TGT)]
    return train_bpe_tokenizer(texts, vocab_size)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def llama_config(tok, spec: ModelSpec, vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=spec.hidden,
        intermediate_size=spec.ffn,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
        attention_dropout=0.0,
    )


def build_model(
    tok, name: str, seed: int = 0, vocab_size: int | None = None, device: str = "cpu", dtype: str = "float32"
) -> nn.Module:
    """A random-initialised Llama of the named shape, built where it will run (a 13B never passes through
    the CPU). A vocabulary above the tokenizer's (``vocab_size``, or the shape's own, e.g. LLaMA-2's
    32000) pads the embedding and LM head with rows never used as inputs, so the head costs what it does
    in the real model."""
    from transformers import LlamaForCausalLM

    spec = MODELS[name]
    vocab = max(len(tok), vocab_size or 0, spec.vocab or 0)
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(DTYPES[dtype]):
        model = LlamaForCausalLM(llama_config(tok, spec, vocab))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.config.use_cache = False
    return model.train()


def _stats(xs: Sequence[int]) -> dict:
    xs = sorted(xs)
    return {
        "mean": statistics.fmean(xs),
        "median": statistics.median(xs),
        "p90": xs[int(0.9 * (len(xs) - 1))],
        "max": xs[-1],
    }


@dataclass
class Workload:
    """Tokenizer, encoded pairs and the pre-collated batches every implementation runs on."""

    tok: object
    examples: list[PreferenceExample]
    pairs: list[EncodedPair]
    batch_size: int
    steps: int
    pad_id: int
    collator: Collator

    def batch_indices(self, group_by_length: bool = False, seed: int = 0) -> list[list[int]]:
        if not group_by_length:  # sequential: exactly the batches TRL's (sequential) loader forms
            return [list(range(s * self.batch_size, (s + 1) * self.batch_size)) for s in range(self.steps)]
        sampler = WindowBatchSampler(
            [len(p.chosen_ids) for p in self.pairs],
            [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in self.pairs],
            self.batch_size,
            shuffle=True,
            seed=seed,
            group_by_length=True,
        )
        return [[w.index for w in b] for b in sampler][: self.steps]

    def collate(self, idx: Sequence[int], ref: dict | None = None) -> dict:
        items = [{"pair": self.pairs[i]} | ({"ref": ref[self.pairs[i].index]} if ref is not None else {}) for i in idx]
        return self.collator(items)

    def token_lengths(self) -> dict:
        """Prompt (with BOS) and completion (with EOS) token counts of the pairs."""
        return {
            "prompt": _stats([len(p.prompt_ids) for p in self.pairs]),
            "chosen": _stats([len(p.chosen_ids) for p in self.pairs]),
            "rejected": _stats([len(p.rejected_ids) for p in self.pairs]),
        }


def make_workload(
    batch_size: int, steps: int, n_pairs: int | None = None, seed: int = 0, tok=None, lengths: str = "demo"
) -> Workload:
    if lengths not in LENGTHS:
        raise ValueError(f"lengths={lengths!r} is not one of {', '.join(LENGTHS)}")
    tok = tok or build_tokenizer(seed)
    n = n_pairs or batch_size * steps
    examples = (
        make_examples(n, seed) if lengths == "demo" else length_matched_examples(tok, n, seed, lengths == "alma_r_max")
    )
    enc = PairEncoder(tok, max_prompt_length=256, max_length=512)
    pairs = [enc.encode(i, ex) for i, ex in enumerate(examples)]
    assert all(p is not None for p in pairs) and not enc.counts.get("completion_truncated"), enc.counts
    return Workload(tok, examples, pairs, batch_size, steps, tok.pad_token_id, Collator(tok.pad_token_id))
