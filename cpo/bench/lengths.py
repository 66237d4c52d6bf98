"""Preference pairs whose token lengths follow ALMA-R's data, built from the demo's words for any tokenizer.

ALMA-R trains on FLORES-200 sentences in ten directions with a LLaMA-2 tokenizer, prompts up to 256
tokens and prompt + completion up to 512. The tables below are quantiles (0, 5, ..., 100 %) of

- ``SOURCE_TOKENS``: tokens of the source sentence alone, and
- ``TARGET_RATIO``: tokens of the translation (with EOS) per source token,

measured with :func:`measure` on the test and validation sets of ALMA's human-written parallel data in
the same ten directions (WMT and FLORES-200 sentences, 21,479 pairs;
``python -m cpo.bench.lengths ../shared/data/alma_human_written``). The
tokenizer is a stand-in for LLaMA-2's, trained locally: a 32000-piece SentencePiece BPE with byte
fallback and split digits (LLaMA-2's settings) on the same corpus's training text, English-heavy (all
English lines, a tenth of the others), as LLaMA-2's pre-training mix is. Lengths are drawn from these
tables (the source and each side's ratio independently), then clipped to ALMA-R's bounds, which
cut 0.07 % of the measured pairs.
"""

from __future__ import annotations

import bisect
import random
from typing import Sequence

# The direction of the synthetic workload: the demo's invented language into English.
SRC, TGT = "zb", "en"

SOURCE_TOKENS = (1, 8, 10, 13, 15, 17, 19, 21, 24, 26, 29, 31, 34, 37, 40, 44, 48, 54, 62, 77, 1062)
TARGET_RATIO = (
    0.126,
    0.538,
    0.591,
    0.63,
    0.667,
    0.696,
    0.727,
    0.765,
    0.808,
    0.857,
    0.923,
    1.02,
    1.188,
    1.32,
    1.417,
    1.508,
    1.611,
    1.722,
    1.857,
    2.077,
    6.0,
)
MAX_PROMPT, MAX_TOTAL = 256, 512  # ALMA-R's max_prompt_length and max_length (SPEC section 5)


def _quantile(table: Sequence[float], u: float) -> float:
    """Linear interpolation in a table of quantiles at 0, 1/(n-1), ..., 1."""
    x = u * (len(table) - 1)
    i = min(int(x), len(table) - 2)
    return table[i] + (x - i) * (table[i + 1] - table[i])


def draw_lengths(n: int, seed: int, prompt_overhead: int, worst_case: bool = False) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token counts; the prompt's include the template's ``prompt_overhead``
    (BOS and ALMA's instruction), the completions' their EOS. ``worst_case``: every pair at the bounds."""
    if worst_case:
        half = MAX_TOTAL - MAX_PROMPT
        return [(MAX_PROMPT, half, half)] * n
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        src = max(1, round(_quantile(SOURCE_TOKENS, rng.random())))
        prompt = min(MAX_PROMPT, prompt_overhead + src)
        room = MAX_TOTAL - prompt
        sides = [min(room, 1 + max(1, round(src * _quantile(TARGET_RATIO, rng.random())))) for _ in range(2)]
        out.append((prompt, sides[0], sides[1]))
    return out


class WordCoster:
    """Builds texts of an exact token count from a word pool, for tokenizers that split at spaces first.

    Inside a prompt or a completion every word follows a space (``": word"``, ``" word"``), and a
    byte-level BPE never merges across that split, so a text's token count is the sum of its words'
    counts as ``" " + word``.
    """

    def __init__(self, tok, words: Sequence[str]):
        self.tok = tok
        by_cost: dict[int, list[str]] = {}
        for w in sorted(set(words)):
            by_cost.setdefault(len(tok(" " + w, add_special_tokens=False)["input_ids"]), []).append(w)
        self.by_cost = by_cost
        self.costs = sorted(by_cost)
        self.words = [(w, c) for c, ws in by_cost.items() for w in ws]
        if 1 not in by_cost:
            raise ValueError("the word pool has no single-token word, so not every length can be built")

    def text(self, n_tokens: int, rng: random.Random) -> str:
        """Space-separated words worth exactly ``n_tokens`` tokens (at least one word)."""
        out, left = [], max(1, n_tokens)
        while left > 0:
            w, c = rng.choice(self.words)
            if c > left:  # finish with a word of exactly the remaining cost (single-token words always exist)
                c = self.costs[bisect.bisect_right(self.costs, left) - 1]
                w = rng.choice(self.by_cost[c])
            out.append(w)
            left -= c
        return " ".join(out)


def length_matched_examples(tok, n: int, seed: int = 0, worst_case: bool = False):
    """``n`` demo-language (Zorbish -> English) pairs with ALMA-R's token lengths under ``tok``."""
    from cpo.data import PairEncoder, PreferenceExample, format_prompt
    from cpo.demo.language import sample_sentences

    sents = sample_sentences(400, seed + 11)
    src_words = WordCoster(tok, [w for s in sents for w in s.source.split()])
    tgt_words = WordCoster(tok, [w for s in sents for w in s.translation.split()])
    enc = PairEncoder(tok, max_prompt_length=MAX_PROMPT, max_length=MAX_TOTAL)
    probe = src_words.words[0][0]
    overhead = len(enc.prompt_ids(format_prompt(probe, SRC, TGT))) - src_words.words[0][1]
    rng = random.Random(seed)
    out = []
    for prompt, chosen, rejected in draw_lengths(n, seed, overhead, worst_case):
        source = src_words.text(prompt - overhead, rng)
        c = tgt_words.text(chosen - 1, rng)  # the encoder adds EOS
        r = tgt_words.text(rejected - 1, rng)
        while r == c:
            r = tgt_words.text(rejected - 1, rng)
        out.append(PreferenceExample(source, c, r, SRC, TGT))
    return out


def measure(root: str, workdir: str = "/tmp/cpo-alma-lengths") -> dict:
    """Re-measures the two tables (see the module docstring); needs sentencepiece and the ALMA corpus."""
    import glob
    import json
    import os

    import sentencepiece as spm

    from cpo.data import format_prompt

    os.makedirs(workdir, exist_ok=True)
    english, other = [], []
    for f in sorted(glob.glob(f"{root}/*/train.*-*.??")):
        with open(f, encoding="utf-8") as fh:
            (english if f.endswith(".en") else other).append(fh.read().splitlines())
    rng = random.Random(0)
    lines = [x for ls in english for x in ls] + [x for ls in other for x in rng.sample(ls, len(ls) // 10)]
    corpus = os.path.join(workdir, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=corpus,
        model_prefix=os.path.join(workdir, "proxy"),
        vocab_size=32000,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        input_sentence_size=400000,
        shuffle_input_sentence=True,
        num_threads=1,
        character_coverage=0.9995,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=os.path.join(workdir, "proxy.model"))
    src, ratio, prompt, total = [], [], [], []
    for f in sorted(glob.glob(f"{root}/*/test.*.json") + glob.glob(f"{root}/*/valid.*.json")):
        s, t = os.path.basename(f).split(".")[1].split("-")
        with open(f, encoding="utf-8") as fh:
            rows = json.load(fh)
        for row in rows:
            x, y = row["translation"][s], row["translation"][t]
            ns, nc = len(sp.encode(x)), len(sp.encode(y)) + 1
            if ns:
                np_ = 1 + len(sp.encode(format_prompt(x, s, t)))
                src.append(ns), ratio.append(nc / ns), prompt.append(np_), total.append(np_ + nc)

    def q(v):
        v = sorted(v)
        return [v[min(len(v) - 1, round(i / 20 * (len(v) - 1)))] for i in range(21)]

    return {
        "pairs": len(src),
        "SOURCE_TOKENS": q(src),
        "TARGET_RATIO": [round(x, 3) for x in q(ratio)],
        "prompt_tokens": q(prompt),
        "total_tokens": q(total),
        "share_cut": sum(p > MAX_PROMPT or t > MAX_TOTAL for p, t in zip(prompt, total)) / len(src),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(measure(sys.argv[1]), indent=1))
