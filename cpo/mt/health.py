"""Health checks of a translator's output: figures that expose a degenerating model while its loss looks fine.

After preference optimisation a translator can drift into failure modes that a falling loss does
not show: it answers in the wrong language, copies its source, loops, or stops translating. Each
check below is a share of the ``n`` hypotheses of a corpus (except ``length_ratio`` and ``empty``),
so "lower is better" for every rate, and a healthy system sits near its references' floor.

- ``off_target``: share of hypotheses that a language identifier assigns to a language other than
  the target (the off-target rate of Zhang et al. 2020, with langid.py as there). The identifier is
  langid.py's model (97 languages) as shipped inside the ``py3langid`` package: nothing is
  downloaded. Empty hypotheses are in no language and do not count. On short or closely related
  text it errs: on the WMT'22 references it is 0.1-3% per target and 5% for Russian (taken for
  Bulgarian or Ukrainian); compare systems on one test set, not with zero. **Absent** (not 0) when
  the identifier does not know the target language, such as the demo's invented ``zb``.
- ``off_target_src``: the part of ``off_target`` identified as the source language (the model
  stopped translating). Absent when the identifier knows either language not, or none is given.
- ``copy_rate``: share of hypotheses that copy their source: after case folding and removing
  whitespace, the sets of character 3-grams of hypothesis and source have a Dice coefficient
  ``2|A∩B| / (|A|+|B|) >= 0.8`` (texts under 3 characters: equal after that normalisation).
  Names, numbers and URLs are legitimately copied: 0-0.1% of the WMT'22 references reach it.
- ``repetition``: share of hypotheses with a loop: three or more back-to-back copies of the same
  sequence of units that together cover at least 12 units (so 12 copies of one unit, 6 of two, 4
  of three, 3 of four or more). Units are whitespace-separated words, or non-space characters for
  languages written without spaces (zh, ja, th). No WMT'22 reference has one.
- ``length_ratio``: total hypothesis length / total reference length, in the same units
  (characters for zh, ja, th; words otherwise); 1 is ideal, a collapse to short outputs shows here.
- ``empty``: the number of empty hypotheses (nothing visible: whitespace or zero-width characters).

All checks are array operations over the whole corpus: :func:`health_checks` took 6-19 ms per 100
WMT'22 sentences (5 ms for 200 demo sentences) on one thread of a busy 2-core machine, where
langid.py's own per-sentence loop alone takes 30-100 ms.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from cpo.text import ZERO_WIDTH, is_blank

__all__ = ["HEALTH_KEYS", "CHARACTER_LANGS", "LanguageIdentifier", "copies_source", "has_loop", "health_checks",
           "language_identifier", "length_ratio"]

#: Keys ``health_checks`` can fill, in report order.
HEALTH_KEYS = ("off_target", "off_target_src", "copy_rate", "repetition", "length_ratio", "empty")
#: Languages written without spaces between words: lengths and loops count characters.
CHARACTER_LANGS = frozenset({"zh", "ja", "th"})
COPY_DICE = 0.8
#: Codes the identifier may answer for a language (it tells Norwegian Bokmål and Nynorsk apart).
_SAME_LANGUAGE = {"no": {"no", "nb", "nn"}, "nb": {"no", "nb"}, "nn": {"no", "nn"}}
_INVISIBLE = re.compile(f"[\\s{ZERO_WIDTH}]+")
# 3+ back-to-back copies covering >= 12 units: 12 x 1 unit, 6 x 2, 4 x 3, 3 x (4 or more).
_LOOP = re.compile(r"(.)\1{11,}|(..)\2{5,}|(...)\3{3,}|(.{4,}?)\4{2,}", re.S)


# --------------------------------------------------------------------------- language identification
class LanguageIdentifier:
    """langid.py (Lui & Baldwin 2012) on a whole batch at once, with the model py3langid ships.

    langid.py counts 7,480 byte n-grams (n = 1..4) by running each text through an Aho-Corasick
    automaton, one Python step per byte, and scores the counts with naive Bayes: about 0.5 ms per
    sentence. An n-gram's count is the number of its occurrences, so here the n-grams of every
    text are looked up directly, with array operations over the batch; the feature strings are
    read back from the automaton (the shortest byte path to a state is its n-gram). The answers are
    py3langid's (``tests/test_health.py`` compares them on real sentences).
    """

    def __init__(self) -> None:
        try:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier as _Model
        except ImportError as e:  # a declared dependency; say which
            raise ImportError(
                f"off_target needs the py3langid package (pip install 'py3langid>=0.2.2,<0.3'): {e}"
            ) from e
        model = _Model.from_pickled_model(MODEL_FILE, norm_probs=False)
        self.languages: tuple[str, ...] = tuple(model.nb_classes)
        self._ptc = np.asarray(model.nb_ptc, dtype=np.float32)  # [features, languages], as py3langid computes
        self._pc = np.asarray(model.nb_pc, dtype=np.float32)
        order, value, feature = _feature_ngrams(model)
        self._direct = {}
        self._sorted = {}
        for n in (1, 2):
            table = np.full(1 << (8 * n), -1, dtype=np.int64)
            table[value[order == n]] = feature[order == n]
            self._direct[n] = table
        for n in (3, 4):
            sel = np.flatnonzero(order == n)
            by_value = sel[np.argsort(value[sel])]
            self._sorted[n] = (value[by_value], feature[by_value])

    def _lookup(self, n: int, values: np.ndarray) -> np.ndarray:
        """Feature index of each n-gram value, -1 where it is not a feature."""
        if n in self._direct:
            return self._direct[n][values]
        keys, feats = self._sorted[n]
        j = np.minimum(np.searchsorted(keys, values), len(keys) - 1)
        return np.where(keys[j] == values, feats[j], -1)

    def classify(self, texts: Sequence[str]) -> list[str]:
        """The most probable language code of each text (py3langid's ``classify(text)[0]``)."""
        data = [t.encode("utf-8") for t in texts]
        n, n_feats = len(data), self._ptc.shape[0]
        if not n:
            return []
        lens = np.fromiter(map(len, data), dtype=np.int64, count=n)
        buf = np.frombuffer(b"".join(data), dtype=np.uint8).astype(np.int64)
        text_id = np.repeat(np.arange(n), lens)
        pos = np.arange(buf.size) - np.repeat(np.cumsum(lens) - lens, lens)
        value = buf.copy()  # value[i]: the n bytes ending at i, big-endian, for n = 1, 2, 3, 4 in turn
        pieces = []
        for order in range(1, 5):
            if order > 1:
                value[order - 1:] = (value[order - 2:-1] << 8) | buf[order - 1:]
            at = np.flatnonzero(pos >= order - 1)  # the n-gram lies inside one text
            feat = self._lookup(order, value[at])
            hit = feat >= 0
            pieces.append(text_id[at[hit]] * n_feats + feat[hit])
        keys, counts = np.unique(np.concatenate(pieces), return_counts=True)
        rows, feats = keys // n_feats, keys % n_feats
        logits = np.tile(self._pc, (n, 1))
        if keys.size:
            starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
            weighted = self._ptc[feats] * counts[:, None].astype(np.float32)
            logits[rows[starts]] += np.add.reduceat(weighted, starts, axis=0)
        return [self.languages[i] for i in logits.argmax(axis=1)]


def _feature_ngrams(model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, big-endian byte value, feature index) of every feature of langid.py's automaton.

    Breadth-first from the start state, the first path to reach a state spells its n-gram; a
    feature is reported (``tk_output``) by every state whose n-gram ends with it, and the
    shallowest of them spells the feature itself.
    """
    moves = np.asarray(memoryview(model.tk_nextmove)).astype(np.int64).reshape(-1, 256)
    depth = np.full(moves.shape[0], -1, dtype=np.int64)
    spelled = np.zeros(moves.shape[0], dtype=np.int64)
    depth[0] = 0
    frontier = np.zeros(1, dtype=np.int64)
    while frontier.size:
        child = moves[frontier].ravel()
        parent = np.repeat(frontier, 256)
        byte = np.tile(np.arange(256), frontier.size)
        new = depth[child] < 0
        child, parent, byte = child[new], parent[new], byte[new]
        if np.unique(child).size != child.size:
            raise RuntimeError("py3langid's model is not the langid.py automaton cpo.mt.health reads; "
                               "pin py3langid<0.3")
        depth[child] = depth[parent] + 1
        spelled[child] = (spelled[parent] << 8) | byte
        frontier = child
    states, feats = [], []
    for state, outputs in model.tk_output.items():
        states.extend([state] * len(outputs))
        feats.extend(outputs)
    states, feats = np.asarray(states, dtype=np.int64), np.asarray(feats, dtype=np.int64)
    by_feature = np.lexsort((depth[states], feats))
    first = by_feature[np.r_[True, feats[by_feature][1:] != feats[by_feature][:-1]]]
    order = depth[states[first]]
    if first.size != model.nb_ptc.shape[0] or order.min() < 1 or order.max() > 4:
        raise RuntimeError("py3langid's model is not the langid.py automaton cpo.mt.health reads; pin py3langid<0.3")
    return order, spelled[states[first]], feats[first]


@lru_cache(maxsize=1)
def language_identifier() -> LanguageIdentifier:
    """The process's identifier, built on first use (about 0.3 s)."""
    return LanguageIdentifier()


def _accepted(code: str | None, known: Sequence[str]) -> set[str] | None:
    """The identifier's codes for a language, or None when it does not know the language."""
    if not code:
        return None
    codes = _SAME_LANGUAGE.get(code, {code})
    return codes if codes & set(known) else None


# --------------------------------------------------------------------------- copies, loops, length
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _trigram_sets(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Normalised texts, and the sorted unique (text index << 40 | 40-bit hash of a character 3-gram) keys."""
    norm = [_INVISIBLE.sub("", t.casefold()) for t in texts]
    lens = np.fromiter(map(len, norm), dtype=np.int64, count=len(norm))
    cp = np.frombuffer("".join(norm).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    end = np.repeat(np.cumsum(lens), lens)
    at = np.flatnonzero(np.arange(cp.size) + 3 <= end)  # a 3-gram starting here stays inside its text
    gram = (cp[at] << np.uint64(42)) | (cp[at + 1] << np.uint64(21)) | cp[at + 2]  # code points have 21 bits
    text_id = np.repeat(np.arange(len(norm), dtype=np.uint64), lens)[at]
    return norm, np.unique((text_id << np.uint64(40)) | ((gram * _MIX) >> np.uint64(24)))


def copies_source(hypotheses: Sequence[str], sources: Sequence[str], threshold: float = COPY_DICE) -> np.ndarray:
    """Which hypotheses copy their source (the module docstring's ``copy_rate`` rule), as a bool array."""
    n = len(hypotheses)
    if len(sources) != n:
        raise ValueError(f"copies_source: {n} hypotheses but {len(sources)} sources")
    hyp_norm, hyp_keys = _trigram_sets(hypotheses)
    src_norm, src_keys = _trigram_sets(sources)
    shift = np.uint64(40)
    a = np.bincount((hyp_keys >> shift).astype(np.int64), minlength=n)
    b = np.bincount((src_keys >> shift).astype(np.int64), minlength=n)
    both = np.bincount((np.intersect1d(hyp_keys, src_keys, assume_unique=True) >> shift).astype(np.int64), minlength=n)
    dice = 2 * both / np.maximum(a + b, 1)
    short = (a == 0) | (b == 0)
    equal = np.fromiter((bool(h) and h == s for h, s in zip(hyp_norm, src_norm)), dtype=bool, count=n)
    return np.where(short, equal, dice >= threshold)


def _words(text: str) -> list[str]:
    return _INVISIBLE.sub(" ", text).split()  # zero-width characters separate words too, as whitespace does


def has_loop(text: str, tgt_lang: str) -> bool:
    """Whether ``text`` loops (the module docstring's ``repetition`` rule)."""
    if tgt_lang in CHARACTER_LANGS:
        units = _INVISIBLE.sub("", text)
    else:  # one character per distinct word, so that the pattern compares whole words
        ids: dict[str, int] = {}
        units = "".join(chr(0x100 + ids.setdefault(w, len(ids))) for w in _words(text))
    return len(units) >= 12 and _LOOP.search(units) is not None


def _length(text: str, tgt_lang: str) -> int:
    return len(_INVISIBLE.sub("", text)) if tgt_lang in CHARACTER_LANGS else len(_words(text))


def length_ratio(hypotheses: Sequence[str], references: Sequence[str], tgt_lang: str) -> float | None:
    """Total hypothesis length / total reference length (characters for zh, ja, th; words otherwise)."""
    ref = sum(_length(r, tgt_lang) for r in references)
    return sum(_length(h, tgt_lang) for h in hypotheses) / ref if ref else None


# --------------------------------------------------------------------------- all checks
def health_checks(
    hypotheses: Sequence[str],
    sources: Sequence[str],
    references: Sequence[str],
    tgt_lang: str,
    src_lang: str | None = None,
) -> dict[str, float | int]:
    """The checks of the module docstring for one direction; keys in :data:`HEALTH_KEYS` order.

    ``off_target`` is left out when the identifier does not know ``tgt_lang``, ``off_target_src``
    when it does not know ``src_lang`` (or none is given): absent, never a 0 that would read as healthy.
    """
    hyps, srcs, refs = list(hypotheses), list(sources), list(references)
    n = len(hyps)
    if not n or len(srcs) != n or len(refs) != n:
        raise ValueError(f"health_checks: {n} hypotheses, {len(srcs)} sources and {len(refs)} references")
    visible = [i for i, h in enumerate(hyps) if not is_blank(h)]
    out: dict[str, float | int] = {}
    lid = language_identifier()
    target = _accepted(tgt_lang, lid.languages)
    if target is not None:
        found = lid.classify([hyps[i] for i in visible])
        out["off_target"] = sum(lang not in target for lang in found) / n
        source = _accepted(src_lang, lid.languages)
        if source is not None and not source & target:
            out["off_target_src"] = sum(lang in source for lang in found) / n
    out["copy_rate"] = float(copies_source(hyps, srcs).sum()) / n
    out["repetition"] = sum(has_loop(h, tgt_lang) for h in hyps) / n
    ratio = length_ratio(hyps, refs, tgt_lang)
    if ratio is not None:
        out["length_ratio"] = ratio
    out["empty"] = n - len(visible)
    return out
