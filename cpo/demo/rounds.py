"""The embedded demo as the inputs of a rounds run (``scripts/rounds.py inputs=demo``, ``conf/inputs/demo.yaml``).

Exports, once, into the demo cache: the demo's preference sources with their gilded references (training and
validation sources of the rounds), the held-out validation sources with their *clean* translations (the dev
set: validation translations are scored against them, as ``data=demo`` does), the test set, and the
outputs of the fixed candidate systems (``strong``, ``weak`` and the warm start's greedy translations) on
the same sources, so that a rounds run with ``pool=offline`` builds exactly the demo's offline pairs.
Round 1 starts from the demo's warm start.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from cpo.data.rounds import RoundInputs, RoundInputSource
from cpo.io import atomic_write_jsonl, atomic_write_lines

SYSTEMS = ("strong", "weak", "warm_start")


class DemoRoundInputs(RoundInputSource):
    """Every keyword is a :class:`cpo.demo.assets.DemoSettings` field (the task and warm start)."""

    def __init__(self, **settings):
        from cpo.demo.assets import DemoSettings

        known = {f.name for f in fields(DemoSettings)}
        unknown = sorted(set(settings) - known)
        if unknown:
            from cpo.errors import ConfigError

            raise ConfigError(f"inputs: unknown demo setting(s) {unknown} (known: {', '.join(sorted(known))})")
        self.settings = DemoSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})

    def load(self, cache_dir: str) -> RoundInputs:
        from cpo.console import say
        from cpo.demo.assets import SRC, TGT, _build_once, demo_candidates, ensure_demo_assets
        from cpo.demo.language import translate

        s = self.settings
        assets = ensure_demo_assets(cache_dir, s, progress=say)
        folder = assets.root / f"rounds-{s.pairs_key()}"

        def export(tmp: Path) -> None:
            pref, refs, cands = demo_candidates(assets, s, SYSTEMS, say)
            n = s.n_train_sources
            for split, rows in (("train", range(0, n)), ("val", range(n, len(pref)))):
                atomic_write_jsonl(tmp / f"{split}.jsonl", [
                    {"source": pref[i].source, "reference": refs[i], "src_lang": SRC, "tgt_lang": TGT} for i in rows])
                for name in SYSTEMS:
                    atomic_write_lines(tmp / f"{name}.{split}.txt", [cands[name][i] for i in rows])
            atomic_write_jsonl(tmp / "dev.jsonl", [
                {"source": x.source, "reference": translate(x.source), "src_lang": SRC, "tgt_lang": TGT}
                for x in pref[n:]])

        _build_once(folder, export, say, "the rounds' sources and offline candidates")
        return RoundInputs(
            train=str(folder / "train.jsonl"), val=str(folder / "val.jsonl"), test=str(assets.test_file),
            dev=str(folder / "dev.jsonl"),
            systems={name: {split: str(folder / f"{name}.{split}.txt") for split in ("train", "val")}
                     for name in SYSTEMS},
            start_model=str(assets.model_dir), label="demo")
