"""The candidates stage: N candidates per source from the round's policy, one multi-candidate JSONL per split and
direction (``round-k/candidates/<split>.<src>-<tgt>.jsonl``, the format of ``cpo.mt.candidates``)."""
from __future__ import annotations

import time
from pathlib import Path

from cpo.console import say
from cpo.errors import ConfigError
from cpo.io import atomic_write_jsonl
from cpo.mt.candidates import candidate_row
from cpo.mt.prompt import PromptTooShort
from cpo.mt.sampling import CandidateSettings, GenerationStats, generate_candidates
from cpo.rounds.sources import SourceRow, by_direction, rows_digest
from cpo.rounds.stages import StageFolder
from cpo.train.policy_loading import load_for_generation, pick_device, pick_dtype


def candidate_file(folder: Path, split: str, direction: str) -> Path:
    return folder / f"{split}.{direction}.jsonl"


def round_seed(seed: int, round_: int) -> int:
    """Round k samples with its own seed, so that two rounds of one policy never draw the same noise."""
    return int(seed) * 1000 + int(round_)


def run_candidates(stage: StageFolder, settings: dict, policy: str, base: str | None,
                   splits: dict[str, list[SourceRow]], decode: CandidateSettings, gen: dict, prompt_format,
                   tracker=None) -> dict:
    """Generate (or reuse) the stage's files. ``settings`` is the stage's identity (decoding, inputs, policy,
    prompt format); ``gen`` holds batch_size, max_new_tokens, max_prompt_length, logprobs, dtype, device,
    progress; ``prompt_format`` writes the prompts, as the round's training does."""
    t0 = time.time()
    record = stage.reuse_or_start(settings)
    if record is not None:
        return record
    say(f"{stage.name}: {decode.n} candidate(s) per source from {policy} "
        f"({decode.num_return_beams} returned beam(s) of {decode.num_beams}, {decode.num_samples} sample(s) at "
        f"temperature {decode.temperature:g}, top-p {decode.top_p:g}, top-k {decode.top_k}, seed {decode.seed})")
    device = pick_device(gen["device"])
    adapter = (Path(policy) / "adapter_config.json").is_file()  # a LoRA policy: its adapter on the base, merged
    model, tokenizer = load_for_generation(base if adapter else policy, policy if adapter else None,
                                           pick_dtype(gen["dtype"], device), device)
    outputs: dict = {"files": {}, "stats": {}}
    total = GenerationStats()
    for split, rows in splits.items():
        for direction, group in by_direction(rows).items():
            stats = GenerationStats()
            src, tgt = direction.split("-")
            try:
                out = generate_candidates(model, tokenizer, [r.source for r in group], src, tgt, decode,
                                          batch_size=gen["batch_size"], max_new_tokens=gen["max_new_tokens"],
                                          max_prompt_length=gen["max_prompt_length"], logprobs=gen["logprobs"],
                                          progress=gen["progress"], stats=stats, prompt_format=prompt_format)
            except PromptTooShort as e:
                raise ConfigError(f"candidates.max_prompt_length={gen['max_prompt_length']}: {e}") from None
            path = candidate_file(stage.path, split, direction)
            atomic_write_jsonl(path, [
                {**candidate_row(r.source, src, tgt, o["candidates"], o.get("logprobs"), o["origins"]), "row": r.index}
                for r, o in zip(group, out)])
            outputs["files"][f"{split}.{direction}"] = {"path": path.name, "rows": rows_digest(group)}
            outputs["stats"][f"{split}.{direction}"] = stats.as_dict()
            for k in ("sources", "candidates", "duplicates", "empty"):
                setattr(total, k, getattr(total, k) + getattr(stats, k))
            total.seconds += stats.seconds
            say(f"{stage.name}: {split} {direction}: {stats.candidates} candidates for {stats.sources} sources "
                f"({stats.duplicates} duplicates, {stats.empty} empty; {stats.sentences_per_s:.1f} sentences/s, "
                f"{stats.candidates_per_s:.1f} candidates/s)")
    outputs["total"] = {k: v for k, v in total.as_dict().items() if k != "cleaning"}
    del model
    record = stage.finish(settings, outputs, time.time() - t0)
    if tracker is not None:
        tracker.log_stage(stage, settings, outputs["total"])
    return record
