"""The embedded demo as a data source (``data=demo``): cached assets -> preference examples, a clean
dev set for validation, the test set, and the warm-start model the ``tiny`` presets train from."""
from __future__ import annotations

from dataclasses import fields

from cpo.data.records import read_preference_jsonl
from cpo.data.sources import DataSource, LoadContext, RunData, TestSet, read_test_file


class DemoData(DataSource):
    """Every keyword is a :class:`cpo.demo.assets.DemoSettings` field; ``model`` holds the demo model's
    size and warm-start settings (``model.demo`` of the tiny presets), ignored for other models."""

    name = "demo"

    def __init__(self, model: dict | None = None, **settings):
        from cpo.demo.assets import DemoSettings

        known = {f.name for f in fields(DemoSettings)}
        merged = {k: v for k, v in {**settings, **(model or {})}.items() if k in known}
        if "candidates" in merged:
            merged["candidates"] = tuple(merged["candidates"])
        self.settings = DemoSettings(**merged)

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        from cpo.demo.assets import DemoSettings

        return ("model", *(f.name for f in fields(DemoSettings)))

    def load(self, ctx: LoadContext) -> RunData:
        from cpo.demo.assets import SRC, TGT, ensure_demo_assets
        from cpo.demo.language import translate

        assets = ensure_demo_assets(ctx.cache_dir, self.settings, progress=ctx.progress)
        train, val = read_preference_jsonl(assets.train_file), read_preference_jsonl(assets.val_file)
        # Validation translations are scored against the rule-computed, clean translations of the held-out
        # sources, not the gilded references of the preference data (which carry the translator's habits).
        sources = list(dict.fromkeys(e.source for e in val))
        dev = TestSet(sources, [translate(s) for s in sources], SRC, TGT, label="clean reference")
        files = [str(assets.train_file), str(assets.val_file), str(assets.test_file)]
        return RunData(
            train, val, read_test_file(str(assets.test_file)), dev, models={"demo": str(assets.model_dir)},
            default_scorers=("demo_qe",), files=files,
            # Greedy decoding of short sentences is enough here and keeps the demo fast (real data: 5 beams, SPEC 6).
            generation={"num_beams": 1, "max_new_tokens": 64},
        )
