"""Preference data: records and readers, sources built from ``conf/data``, token ids, batches, the data module.

Flow: a source (``sources.py``, built from the config) reads ``PreferenceExample`` records
(``records.py``, ``alma_r.py``) -> ``PairEncoder`` turns each into token ids (``encoding.py``: the prompt of
``cpo.mt.prompt``, completions with EOS, the truncation rules of SPEC section 4) -> ``WindowBatchSampler``
forms micro-batches that know their accumulation window's totals and ``Collator`` pads them
(``batching.py``) -> ``PreferenceDataModule`` serves them to Lightning (``module.py``).
"""
from cpo.data.batching import Collator, PairDataset, WindowBatchSampler, WindowIndex, _left_pad, _right_pad
from cpo.data.encoding import EncodedPair, PairEncoder
from cpo.data.module import PreferenceDataModule
from cpo.data.records import REQUIRED_FIELDS, PreferenceExample, example_from_record, read_preference_jsonl
from cpo.data.sources import DataSource, LoadContext, RunData, TestSet, build_source, split_examples
from cpo.mt.prompt import format_prompt

__all__ = [
    "REQUIRED_FIELDS", "Collator", "DataSource", "EncodedPair", "LoadContext", "PairDataset", "PairEncoder",
    "PreferenceDataModule", "PreferenceExample", "RunData", "TestSet", "WindowBatchSampler", "WindowIndex",
    "build_source", "example_from_record", "format_prompt", "read_preference_jsonl", "split_examples",
    "_left_pad", "_right_pad",
]


def __getattr__(name):  # the ALMA-R reader imports cpo.pairs.rule: load it only when asked for
    if name in ("alma_r_examples", "read_alma_r_preference", "ALMA_R_SYSTEMS"):
        from cpo.data import alma_r

        return getattr(alma_r, name)
    raise AttributeError(name)
