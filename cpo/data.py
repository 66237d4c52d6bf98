"""Preference data: readers, the ALMA prompt, tokenization with an exact boundary, batching.

Flow: a reader yields ``PreferenceExample``s -> ``PairEncoder`` turns each into token ids (prompt
with BOS, completions with EOS, truncation rules of SPEC section 4) -> ``WindowBatchSampler``
forms micro-batches and tells each one the size of its whole accumulation window (so the loss is
normalised exactly as one large batch would be) -> ``collate`` pads prompts on the left and
completions on the right (see cpo/logprobs.py for why).
"""
from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cpo.io import DataError, Unavailable, iter_jsonl
from cpo.languages import LANGUAGES, language_name
from cpo.preferences import Candidate, Selection, select_pair

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- examples and readers
@dataclass
class PreferenceExample:
    source: str
    chosen: str
    rejected: str
    src_lang: str
    tgt_lang: str
    reference: str | None = None
    provenance: dict = field(default_factory=dict)


REQUIRED_FIELDS = ("source", "chosen", "rejected", "src_lang", "tgt_lang")


def example_from_record(obj: dict, where: str) -> PreferenceExample:
    """Validate one JSONL record of the project's preference format; errors name the field."""
    for key in REQUIRED_FIELDS:
        if key not in obj:
            raise DataError(f"{where}: missing field {key!r}")
        if not isinstance(obj[key], str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(obj[key]).__name__}")
        if key in ("source", "chosen", "rejected") and not obj[key].strip():
            raise DataError(f"{where}: field {key!r} is empty")
    for key in ("src_lang", "tgt_lang"):
        if obj[key] not in LANGUAGES:
            raise DataError(f"{where}: field {key!r}: unknown language code {obj[key]!r}")
    ref = obj.get("reference")
    if ref is not None and (not isinstance(ref, str) or not ref.strip()):
        raise DataError(f"{where}: field 'reference' must be a non-empty string when present")
    return PreferenceExample(
        source=obj["source"],
        chosen=obj["chosen"],
        rejected=obj["rejected"],
        src_lang=obj["src_lang"],
        tgt_lang=obj["tgt_lang"],
        reference=ref,
        provenance=obj.get("provenance") or {},
    )


def read_preference_jsonl(path: str | Path) -> list[PreferenceExample]:
    """The project's preference JSONL (written by scripts/build_preferences.py)."""
    examples = [example_from_record(obj, f"{path}:{i}") for i, obj in iter_jsonl(path)]
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


ALMA_R_SYSTEMS = ("ref", "gpt4", "alma")  # the original tie-breaking order


def alma_r_examples(row: dict, pairs: Sequence[str], scorer: str, where: str) -> tuple[list[PreferenceExample], Counter]:
    """Examples from one ALMA-R-Preference row, one per requested direction.

    A row of config "de-en" holds texts in both languages, so it can give de->en and en->de;
    ``required_directions`` (e.g. "en-de") restricts it to one. A non-zero human ``Delta``
    overrides the scores between gpt4 (Delta > 0) and alma, as in the original code (which by
    mistake returned the two scores instead of the texts there).
    """
    tr = row.get("translation", row)
    dropped: Counter = Counter()
    try:
        a, b = tr["language_pair"].split("-")
    except (KeyError, ValueError):
        raise DataError(f"{where}: field 'translation.language_pair' missing or not like 'de-en'") from None
    required = tr.get("required_directions") or ""
    out = []
    for src, tgt in ((a, b), (b, a)):
        if f"{src}-{tgt}" not in pairs:
            continue
        if required and required.split("-")[1] != tgt:
            dropped["required_directions"] += 1
            continue
        fields = {"ref": tgt, "gpt4": f"gpt4_{tgt}", "alma": f"alma_{tgt}"}
        cands = []
        for system in ALMA_R_SYSTEMS:
            text_key, score_key = fields[system], f"{system}_{tgt}_{scorer}"
            if text_key not in tr or score_key not in tr:
                missing = text_key if text_key not in tr else score_key
                raise DataError(f"{where}: missing field 'translation.{missing}' (scorer={scorer!r})")
            cands.append(Candidate(system, tr[text_key], float(tr[score_key])))
        delta = tr.get("Delta") or 0
        if delta:
            win, lose = (cands[1], cands[2]) if delta > 0 else (cands[2], cands[1])
            sel = Selection(win, lose)
        else:
            sel = select_pair(cands)
        if not sel.kept:
            dropped[sel.dropped] += 1
            continue
        out.append(
            PreferenceExample(
                source=tr[src],
                chosen=sel.chosen.text,
                rejected=sel.rejected.text,
                src_lang=src,
                tgt_lang=tgt,
                reference=tr[tgt],
                provenance={
                    "scorer": scorer,
                    "chosen_system": sel.chosen.system,
                    "rejected_system": sel.rejected.system,
                    "scores": {c.system: c.score for c in cands},
                    "human_delta": delta,
                },
            )
        )
    return out, dropped


def read_alma_r_preference(source: str, pairs: Sequence[str], scorer: str = "kiwi_xcomet", split: str = "train") -> list[PreferenceExample]:
    """ALMA-R-Preference from a local copy (a JSON/JSONL file or a folder of ``<pair>*.jsonl``) or a hub name.

    The hub is touched only when ``source`` is not a local path, i.e. when the user's config names
    a remote data set.
    """
    configs = sorted({"-".join(sorted(p.split("-"), key=lambda x: x == "en")) for p in pairs})  # de-en style
    rows: list[tuple[str, dict]] = []
    path = Path(source)
    if path.exists():
        files = [path] if path.is_file() else sorted(f for c in configs for f in path.glob(f"{c}*.json*"))
        if not files:
            raise DataError(f"{path}: no files named like {configs[0]}*.jsonl for pairs {list(pairs)}")
        for f in files:
            if f.suffix == ".json":
                try:
                    data = json.loads(f.read_text(encoding="utf-8"))
                except json.JSONDecodeError as e:
                    raise DataError(f"{f}:{e.lineno}: malformed JSON ({e.msg})") from None
                rows += [(f"{f}: row {i}", r) for i, r in enumerate(data, 1)]
            else:
                rows += [(f"{f}:{i}", r) for i, r in iter_jsonl(f)]
    else:
        try:
            import datasets
        except ImportError:
            raise Unavailable(f"data.path={source!r}: cannot load it from the hub without the `datasets` package "
                              "(bash scripts/install.sh hub); or pass a local copy") from None
        for c in configs:
            try:
                ds = datasets.load_dataset(source, c, split=split)
            except Exception as e:  # offline, unknown name, missing config: say which and what to do
                raise Unavailable(f"data.path={source!r} (config {c}): cannot load it from the hub ({type(e).__name__}: {e}); "
                                  "pass a local copy instead") from None
            rows += [(f"{source}[{c}] row {i}", r) for i, r in enumerate(ds, 1)]
    examples: list[PreferenceExample] = []
    dropped: Counter = Counter()
    for where, row in rows:
        ex, d = alma_r_examples(row, pairs, scorer, where)
        examples += ex
        dropped += d
    if dropped:
        log.info("ALMA-R-Preference: dropped %s", dict(dropped))
    if not examples:
        raise DataError(f"{source}: no examples for pairs {list(pairs)}")
    return examples


# --------------------------------------------------------------------------- prompt and tokens
def format_prompt(source: str, src_lang: str, tgt_lang: str) -> str:
    """ALMA's prompt (SPEC section 4); the completion follows as ' {translation}' + EOS."""
    src, tgt = language_name(src_lang), language_name(tgt_lang)
    return f"Translate this from {src} to {tgt}:\n{src}: {source}\n{tgt}:"


@dataclass(frozen=True)
class EncodedPair:
    index: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    reference_ids: list[int] | None = None


class PairEncoder:
    """Token ids for prompt and completions with an exact boundary and the truncation rules.

    The prompt is encoded exactly as generation will see it (BOS first when the tokenizer has
    one). A completion is encoded as the continuation of the prompt: tokenize prompt+completion
    and keep what follows the prompt's tokens; when a token would span the boundary (the joint
    tokenization does not start with the prompt's ids) the completion is encoded on its own, so no
    token ever straddles prompt and completion.
    """

    def __init__(self, tokenizer, max_prompt_length: int = 256, max_length: int = 512, prompt_truncation: str = "left"):
        if prompt_truncation not in ("left", "reject"):
            raise ValueError(f"data.prompt_truncation must be 'left' or 'reject', got {prompt_truncation!r}")
        if max_prompt_length < 2 or max_length <= max_prompt_length:
            raise ValueError(f"need 2 <= data.max_prompt_length < data.max_length, got {max_prompt_length} and {max_length}")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; completions must end with one")
        self.tok = tokenizer
        self.max_prompt_length = max_prompt_length
        self.max_length = max_length
        self.prompt_truncation = prompt_truncation
        self.counts: Counter = Counter()

    def prompt_ids(self, prompt: str) -> list[int]:
        ids = self.tok(prompt, add_special_tokens=False)["input_ids"]
        bos = self.tok.bos_token_id
        return [bos] + ids if bos is not None else ids

    def completion_ids(self, prompt: str, prompt_ids: list[int], completion: str) -> list[int]:
        # prompt_ids carry BOS; the joint encoding below is compared without it.
        body = prompt_ids[1:] if self.tok.bos_token_id is not None else prompt_ids
        joint = self.tok(prompt + " " + completion, add_special_tokens=False)["input_ids"]
        if joint[: len(body)] == body and len(joint) > len(body):
            ids = joint[len(body) :]
        else:
            self.counts["boundary_fallback"] += 1
            ids = self.tok(" " + completion, add_special_tokens=False)["input_ids"]
        return ids + [self.tok.eos_token_id]

    def encode(self, index: int, ex: PreferenceExample, with_reference: bool = False) -> EncodedPair | None:
        """Encoded pair, or None (counted by reason) when it cannot fit."""
        prompt = format_prompt(ex.source, ex.src_lang, ex.tgt_lang)
        p = self.prompt_ids(prompt)
        if len(p) > self.max_prompt_length:
            if self.prompt_truncation == "reject":
                self.counts["prompt_too_long"] += 1
                return None
            # Left truncation keeps the end of the source and the "{Tgt}:" cue the model continues from.
            head = p[:1] if self.tok.bos_token_id is not None else []
            p = head + p[len(p) - (self.max_prompt_length - len(head)) :]
            self.counts["prompt_truncated"] += 1
        budget = self.max_length - len(p)
        if budget < 1:  # cannot happen with max_prompt_length < max_length; kept as the invariant
            self.counts["no_room_for_completion"] += 1
            return None
        sides = [ex.chosen, ex.rejected] + ([ex.reference] if with_reference else [])
        encoded = []
        for text in sides:
            ids = self.completion_ids(prompt, p, text)
            if len(ids) > budget:
                ids = ids[:budget]  # right truncation, never to zero tokens (budget >= 1)
                self.counts["completion_truncated"] += 1
            encoded.append(ids)
        self.counts["kept"] += 1
        return EncodedPair(index, p, encoded[0], encoded[1], encoded[2] if with_reference else None)


# --------------------------------------------------------------------------- batching
class WindowIndex(NamedTuple):
    """An example index plus the totals of its accumulation window across all ranks."""

    index: int
    window_pairs: int
    window_tokens: int


class PairDataset(Dataset):
    def __init__(self, pairs: list[EncodedPair], ref_logps: dict[int, tuple[float, float]] | None = None):
        self.pairs = pairs
        self.ref_logps = ref_logps

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        window = None
        if isinstance(i, WindowIndex):
            window, i = i, i.index
        item: dict[str, Any] = {"pair": self.pairs[i]}
        if window is not None:
            item["window"] = (window.window_pairs, window.window_tokens)
        if self.ref_logps is not None:
            item["ref"] = self.ref_logps[self.pairs[i].index]
        return item


class WindowBatchSampler(Sampler):
    """Micro-batches for one rank, each tagged with its accumulation window's pair and token totals.

    Global step k takes ``batch_size * world_size`` examples; rank r gets the r-th slice. A window
    is ``accumulate`` consecutive global steps. Knowing the whole window's token count up front
    lets the NLL term be a token mean over the whole effective batch (paper eq. 4's constraint)
    rather than a mean of micro-batch means. With ``group_by_length``, examples of similar length
    are batched together (less padding) and the batches are then shuffled.
    """

    def __init__(
        self,
        nll_lengths: Sequence[int],
        total_lengths: Sequence[int],
        batch_size: int,
        accumulate: int = 1,
        world_size: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        group_by_length: bool = False,
    ):
        self.nll_lengths = list(nll_lengths)
        self.total_lengths = list(total_lengths)
        self.batch_size, self.accumulate = batch_size, max(1, accumulate)
        self.world_size, self.rank = world_size, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.group_by_length = group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[list[int]]:
        n = len(self.nll_lengths)
        order = list(range(n))
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            rng.shuffle(order)
        step = self.batch_size * self.world_size
        if self.group_by_length:
            # Sort within chunks of 50 global batches: similar lengths share a batch, order stays random.
            chunk = step * 50
            order = [i for s in range(0, n, chunk) for i in sorted(order[s : s + chunk], key=lambda j: self.total_lengths[j])]
        batches = [order[s : s + step] for s in range(0, n, step)]
        if batches and len(batches[-1]) < step and self.drop_last:
            batches.pop()
        if self.group_by_length and self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[WindowIndex]]:
        batches = self._global_batches()
        for w in range(0, len(batches), self.accumulate):
            window = batches[w : w + self.accumulate]
            pairs = sum(len(b) for b in window)
            tokens = sum(self.nll_lengths[i] for b in window for i in b)
            for b in window:
                per_rank = math.ceil(len(b) / self.world_size)
                mine = b[self.rank * per_rank : (self.rank + 1) * per_rank]
                if mine:
                    yield [WindowIndex(i, pairs, tokens) for i in mine]

    def __len__(self) -> int:
        n = len(self.nll_lengths)
        step = self.batch_size * self.world_size
        return n // step if self.drop_last else math.ceil(n / step)


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s) :] = torch.tensor(s)
        mask[r, width - len(s) :] = 1
    return ids, mask


def _right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    return ids, mask


class Collator:
    """Pads a list of dataset items into the batch dict the LightningModule consumes."""

    def __init__(self, pad_id: int, nll_target: str = "chosen"):
        self.pad_id = pad_id
        self.nll_target = nll_target

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        pairs: list[EncodedPair] = [it["pair"] for it in items]
        batch: dict[str, torch.Tensor] = {"index": torch.tensor([p.index for p in pairs])}
        batch["prompt_ids"], batch["prompt_mask"] = _left_pad([p.prompt_ids for p in pairs], self.pad_id)
        batch["chosen_ids"], batch["chosen_mask"] = _right_pad([p.chosen_ids for p in pairs], self.pad_id)
        batch["rejected_ids"], batch["rejected_mask"] = _right_pad([p.rejected_ids for p in pairs], self.pad_id)
        if all(p.reference_ids is not None for p in pairs):
            batch["reference_ids"], batch["reference_mask"] = _right_pad([p.reference_ids for p in pairs], self.pad_id)
        nll_key = "reference_mask" if self.nll_target == "reference" else "chosen_mask"
        if "window" in items[0]:
            pairs_w, tokens_w = items[0]["window"]
        else:  # evaluation batches: the batch is its own window
            pairs_w, tokens_w = len(pairs), int(batch[nll_key].sum()) if nll_key in batch else 0
        batch["window_pairs"] = torch.tensor(float(pairs_w))
        batch["window_tokens"] = torch.tensor(float(tokens_w))
        if "ref" in items[0]:
            ref = torch.tensor([it["ref"] for it in items], dtype=torch.float32)
            batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref[:, 0], ref[:, 1]
        return batch


# --------------------------------------------------------------------------- the data module
def split_examples(examples: list[PreferenceExample], val_size: int | float, seed: int) -> tuple[list, list]:
    """Deterministic held-out split by source sentence, so no source is in both sides."""
    sources = sorted({e.source for e in examples})
    random.Random(seed).shuffle(sources)
    n_val = int(round(val_size * len(sources))) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    val_sources = set(sources[:n_val])
    return [e for e in examples if e.source not in val_sources], [e for e in examples if e.source in val_sources]


class PreferenceDataModule(L.LightningDataModule):
    """Owns tokenization, batching and distribution of train/val preference pairs."""

    def __init__(
        self,
        train: list[PreferenceExample],
        val: list[PreferenceExample],
        tokenizer,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        max_prompt_length: int = 256,
        max_length: int = 512,
        prompt_truncation: str = "left",
        nll_target: str = "chosen",
        group_by_length: bool = False,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        if nll_target == "reference" and any(e.reference is None for e in train):
            missing = sum(e.reference is None for e in train)
            raise DataError(f"loss.nll_target=reference needs a 'reference' field, but {missing} training examples have none")
        self.train_examples, self.val_examples = train, val
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.encoder = PairEncoder(tokenizer, max_prompt_length, max_length, prompt_truncation)
        self.nll_target = nll_target
        self.group_by_length = group_by_length
        self.seed = seed
        self.num_workers = num_workers
        with_ref = nll_target == "reference"
        self.train_pairs = self._encode(train, with_ref)
        self.val_pairs = self._encode(val, with_ref and all(e.reference for e in val))
        self.ref_logps: dict[str, dict[int, tuple[float, float]]] | None = None
        if not self.train_pairs:
            raise DataError(f"no training pair fits max_length={max_length}: {dict(self.encoder.counts)}")
        self.collator = Collator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id, nll_target)

    def _encode(self, examples: list[PreferenceExample], with_ref: bool) -> list[EncodedPair]:
        out = []
        for i, ex in enumerate(examples):
            enc = self.encoder.encode(i, ex, with_reference=with_ref)
            if enc is not None:
                out.append(enc)
        return out

    @property
    def drop_counts(self) -> dict[str, int]:
        return dict(self.encoder.counts)

    def _nll_len(self, p: EncodedPair) -> int:
        return len(p.reference_ids if self.nll_target == "reference" and p.reference_ids else p.chosen_ids)

    def _loader(self, pairs: list[EncodedPair], split: str, train: bool) -> DataLoader:
        world, rank, accumulate = 1, 0, 1
        if self.trainer is not None:
            world, rank = self.trainer.world_size, self.trainer.global_rank
            if train:
                accumulate = self.trainer.accumulate_grad_batches
        sampler = WindowBatchSampler(
            [self._nll_len(p) for p in pairs],
            [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs],
            self.batch_size if train else self.eval_batch_size,
            accumulate=accumulate,
            world_size=world,
            rank=rank,
            shuffle=train,
            seed=self.seed,
            drop_last=train and len(pairs) >= self.batch_size * world,
            group_by_length=self.group_by_length,
        )
        refs = self.ref_logps.get(split) if self.ref_logps else None
        return DataLoader(PairDataset(pairs, refs), batch_sampler=sampler, collate_fn=self.collator, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_pairs, "train", train=True)

    def heldout_dataloader(self) -> DataLoader:
        """All validation pairs on this process, unsharded (the before/after table runs on rank 0 alone)."""
        return DataLoader(PairDataset(self.val_pairs), batch_size=self.eval_batch_size, collate_fn=self.collator)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_pairs, "val", train=False) if self.val_pairs else []
