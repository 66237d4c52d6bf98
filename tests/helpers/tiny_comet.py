"""Build real, tiny COMET checkpoints offline, for tests of the scoring path.

The point is to exercise exactly the code that a hub model goes through after
``comet.download_model``: a ``checkpoints/model.ckpt`` with ``hparams.yaml`` in its
grandparent folder, loaded by ``comet.load_from_checkpoint``. Only the size differs: a
sentencepiece unigram vocabulary trained on a few hundred synthetic sentences and an
XLM-R encoder of hidden size 32 with 2 layers, fitted for one epoch on a small CSV.
"""
from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

_WORDS = {
    "en": "the cat dog house tree river city sees eats builds small large green old new fast slow "
    "and with under over near today yesterday a one two three people car road".split(),
    "de": "der die das Katze Hund Haus Baum Fluss Stadt sieht isst baut klein gross grün alt neu "
    "schnell langsam und mit unter über nahe heute gestern ein eine zwei drei Leute Auto Straße".split(),
    "cs": "kočka pes dům strom řeka město vidí jí staví malý velký zelený starý nový rychle pomalu "
    "a s pod nad blízko dnes včera jeden dva tři lidé auto silnice".split(),
}


@dataclass(frozen=True)
class TinyComet:
    """Paths of the built checkpoints (each ``<dir>/checkpoints/model.ckpt``)."""

    encoder_dir: Path
    qe_dir: Path  # UnifiedMetric, input_segments ["mt", "src"]: reference-free
    ref_dir: Path  # RegressionMetric: needs a reference

    @property
    def qe_ckpt(self) -> Path:
        return self.qe_dir / "checkpoints" / "model.ckpt"

    @property
    def ref_ckpt(self) -> Path:
        return self.ref_dir / "checkpoints" / "model.ckpt"


def synthetic_sentences(n: int, lang: str, seed: int = 0) -> list[str]:
    """Deterministic pseudo-sentences in a language's small word list."""
    rng = random.Random(f"{seed}-{lang}")
    words = _WORDS[lang]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + "." for _ in range(n)]


def _build_encoder(folder: Path, sentences: list[str]) -> None:
    """Sentencepiece unigram vocabulary + XLM-R tokenizers + tiny XLMRobertaConfig in one folder."""
    import sentencepiece as spm
    from transformers import XLMRobertaConfig, XLMRobertaTokenizer, XLMRobertaTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    prefix = folder / "spm"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=200, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    slow = XLMRobertaTokenizer(vocab_file=f"{prefix}.model")
    slow.save_pretrained(folder)
    fast = XLMRobertaTokenizerFast.from_pretrained(folder, from_slow=True)
    fast.save_pretrained(folder)
    config = XLMRobertaConfig(
        vocab_size=len(slow), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=130, pad_token_id=slow.pad_token_id,
        bos_token_id=slow.bos_token_id, eos_token_id=slow.eos_token_id,
    )
    config.save_pretrained(folder)


def _write_csv(path: Path, n: int) -> None:
    """Training rows (src, mt, ref, score): a noisy copy scores lower than a faithful one."""
    rng = random.Random(1)
    srcs = synthetic_sentences(n, "de", seed=2)
    refs = synthetic_sentences(n, "en", seed=3)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["src", "mt", "ref", "score"])
        for src, ref in zip(srcs, refs):
            words = ref.split()
            keep = rng.random()
            mt = " ".join(x for x in words if rng.random() < keep) or words[0]
            w.writerow([src, mt, ref, round(keep, 3)])


def _fit_and_save(model, out_dir: Path) -> None:
    """One epoch with pytorch_lightning (the package comet uses), then checkpoint + hparams.yaml."""
    import pytorch_lightning as ptl
    import yaml

    trainer = ptl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=1,
    )
    trainer.fit(model)
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(out_dir / "checkpoints" / "model.ckpt")
    hparams = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(model.hparams).items()}
    (out_dir / "hparams.yaml").write_text(yaml.safe_dump(hparams), encoding="utf-8")


def build_tiny_comet(root: Path, n_train: int = 64) -> TinyComet:
    """Build a reference-free (CometKiwi-like) and a reference-based tiny COMET under ``root``.

    About a few seconds on one CPU thread. ``pretrained_model`` in the hparams is the absolute
    encoder folder, which must outlive the checkpoints (it is re-read on load).
    """
    import torch
    from comet.models import RegressionMetric, UnifiedMetric

    root = Path(root).resolve()
    enc = root / "encoder"
    sentences = [s for lang in _WORDS for s in synthetic_sentences(150, lang)]
    _build_encoder(enc, sentences)
    data = root / "train.csv"
    _write_csv(data, n_train)
    common = dict(
        pretrained_model=str(enc), load_pretrained_weights=False, local_files_only=True,
        train_data=[str(data)], validation_data=[str(data)], batch_size=16, hidden_sizes=[32],
        nr_frozen_epochs=0.0, keep_embeddings_frozen=False, learning_rate=1e-3,
        encoder_learning_rate=1e-4,
    )
    torch.manual_seed(0)
    qe = UnifiedMetric(
        input_segments=["mt", "src"], layer_transformation="sparsemax", word_layer=2, **common,
    )
    _fit_and_save(qe, root / "qe")
    torch.manual_seed(0)
    ref = RegressionMetric(layer_transformation="softmax", **common)
    _fit_and_save(ref, root / "ref")
    return TinyComet(encoder_dir=enc, qe_dir=root / "qe", ref_dir=root / "ref")
