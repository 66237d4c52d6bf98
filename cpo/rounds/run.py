"""A rounds run from its config (``scripts/rounds.py``, ``conf/rounds.yaml``): its folder, stages, resume and summary.

    <run>/rounds.json                  the settings and, per finished round, its figures (written after each round)
    <run>/summary.md                   the same as a table: pairs, candidates, validation and test metrics per round
    <run>/scorer_cache/                every score of every round (a re-run or a resumed build scores nothing twice)
    <run>/round-0/train/               the start model evaluated (a 0-step train.py run on round 1's pairs)
    <run>/round-k/candidates/          N candidates per source from round k's policy (when pairs use samples)
    <run>/round-k/pairs/               the round's preference pairs and their build reports
    <run>/round-k/train/               an ordinary train.py run folder, starting from round k - 1's policy

One writer per rounds run (the folder's lock). Killed at any point, the same command resumes at the stage it
was in: finished stages are reused only when their settings and inputs are unchanged (each stage's
fingerprint; the train stage's is train.py's own), an interrupted stage starts over (training resumes from
its checkpoint), and a changed setting is refused naming the keys.
"""
from __future__ import annotations

import contextlib
import json
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cpo.console import say
from cpo.errors import ConfigError
from cpo.io import atomic_write_json, atomic_write_text
from cpo.data.sources import file_fingerprint, instantiate_node
from cpo.rounds.sources import read_rows, round_slice, rows_digest, system_texts
from cpo.rounds.stages import StageFolder
from cpo.rounds.training import flatten, override_value, policy_overrides, run_training

# Keys of the rounds config that cannot change a round's result (left out of the overrides compare groups by).
NEUTRAL = ("logger", "hydra", "progress", "rerun", "cache_dir", "experiment_name", "launcher",
           "rounds_experiment", "rounds", "candidates.batch_size", "candidates.device", "eval_start")


class StageInterrupted(SystemExit):
    """A rounds run stopped by a signal between or inside its non-training stages (exit 128 + signal)."""

    def __init__(self, signum: int, where: str):
        self.message = (f"the rounds run was stopped by {signal.Signals(signum).name} in {where}: run the same "
                        "command again to resume at this stage")
        super().__init__(128 + signum)

    def __str__(self) -> str:
        return self.message


def _positive(value: Any, key: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ConfigError(f"{key}={value} must be a {'non-negative' if allow_zero else 'positive'} integer")
    return int(value)


def compare_overrides(task_overrides: list[str], round_: int) -> list[str]:
    """The rounds run's command-line overrides in train.py's words (``train.optim.lr`` -> ``optim.lr``), less the
    keys that cannot change a round, plus ``round=k``: what scripts/compare.py groups round-k jobs by."""
    out = []
    for o in task_overrides:
        key, _, value = str(o).partition("=")
        bare = key.lstrip("+~")
        if any(bare == n or bare.startswith(n + ".") for n in NEUTRAL):
            continue
        if bare.startswith("train."):
            bare = bare[len("train."):]
        out.append(f"{bare}={value}")
    return out + [f"round={round_}"]


class RoundsRun:
    def __init__(self, cfg: DictConfig, out_dir: Path, task_overrides: list[str]):
        self.cfg, self.dir, self.task = cfg, Path(out_dir), list(task_overrides)
        self.rounds = _positive(cfg.rounds, "rounds")
        self.per_round = cfg.sources.per_round
        if self.per_round is not None:
            _positive(self.per_round, "sources.per_round")
        p, pool = cfg.pairs, cfg.pool
        self.rule = {"samples": bool(pool.samples), "include_ref": bool(pool.include_ref),
                     "pairs_per_source": _positive(p.pairs_per_source, "pairs.pairs_per_source"),
                     "min_score_gap": float(p.min_score_gap)}
        if not self.rule["min_score_gap"] >= 0:
            raise ConfigError(f"pairs.min_score_gap={p.min_score_gap} must be >= 0")
        self.systems = [str(s) for s in (pool.systems or [])]
        n_single = int(self.rule["include_ref"]) + len(self.systems)
        if not self.rule["samples"] and n_single < 2:
            raise ConfigError("pool: without the policy's samples, give at least two of the reference "
                              "(pool.include_ref=true) and the offline systems (pool.systems=[...])")
        self.in_training = False

    # ------------------------------------------------------------------ setup
    def _inputs(self):
        source = instantiate_node(self.cfg.inputs, "inputs")
        inputs = source.load(str(self.cfg.cache_dir))
        unknown = [s for s in self.systems if s not in inputs.systems]
        if unknown:
            raise ConfigError(f"pool.systems: {unknown} are not systems of the inputs "
                              f"(they have: {', '.join(inputs.systems) or 'none'})")
        return inputs

    def _scorer(self):
        from cpo.scoring import ScorerConfigError, build_scorer

        try:
            scorer = build_scorer(OmegaConf.to_container(self.cfg.pairs.scorer, resolve=True),
                                  cache_dir=self.dir / "scorer_cache", progress=bool(self.cfg.progress))
        except ScorerConfigError as e:
            raise ConfigError(f"pairs.scorer: {e}") from None
        if self.rule["include_ref"] and scorer.uses_reference:
            raise ConfigError(f"pairs.scorer {scorer.name!r} is reference-based: with the reference as a candidate "
                              "it would always win; use a reference-free scorer or pool.include_ref=false")
        return scorer

    def _tracker(self):
        from cpo.rounds.tracking import Tracker

        lg = self.cfg.logger
        group = (f"{self.cfg.experiment_name}/" if self.cfg.experiment_name else "rounds/") + self.dir.name
        return Tracker(group, str(lg.project), lg.entity, str(lg.mode)) if lg.name == "wandb" else None

    def _prompt_format(self):
        """The prompt format of every round (conf/prompt), for sampling as for training."""
        from cpo.mt.prompt import build_prompt_format

        try:
            return build_prompt_format(self.cfg.prompt)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def _choice(self, group: str) -> str:
        """The preset chosen for a train.py config group (``loss=dpo``), as Hydra recorded it, else its name."""
        try:
            from hydra.core.hydra_config import HydraConfig

            choice = HydraConfig.get().runtime.choices.get(group)
        except ValueError:  # not under Hydra (tests compose the config themselves)
            choice = None
        return str(choice or self.cfg[group].name)

    def _on_sigterm(self, signum, frame):
        if self.in_training:
            return  # Lightning's handler (called with this one) saves a checkpoint at the next step
        raise StageInterrupted(signum, getattr(self, "where", "a stage"))

    # ------------------------------------------------------------------ stages
    def _train_overrides(self, inputs, policy: str, base: str, pairs_dir: Path, round_: int) -> list[str]:
        cfg = self.cfg
        out = [f"loss={self._choice('loss')}", f"model={self._choice('model')}", f"prompt={self._choice('prompt')}",
               "data=round",
               f"++data.train_file={override_value(str(pairs_dir / 'train.jsonl'))}",
               f"++data.val_file={override_value(str(pairs_dir / 'val.jsonl'))}",
               f"seed={cfg.seed}", f"cache_dir={override_value(str(cfg.cache_dir))}"]
        if inputs.dev:
            out.append(f"++data.dev_file={override_value(inputs.dev)}")
        if inputs.test:
            out.append(f"++data.test_file={override_value(inputs.test)}")
        out.append(f"beta={override_value(cfg.beta)}")
        for group in ("loss", "model", "prompt"):  # the presets' keys as this run has them (loss.alpha=...)
            for key, value in flatten(OmegaConf.to_container(cfg[group], resolve=True)):
                if value != "???" and key not in ("name_or_path", "lora.adapter"):
                    out.append(f"++{group}.{key}={override_value(value)}")
        train = OmegaConf.to_container(cfg.train, resolve=True) if cfg.train else {}
        for key, value in flatten(train):
            # trainer.* goes to Lightning as it is (its keys need not be in train.yaml); a typo elsewhere is refused.
            out.append(f"{'++' if key.startswith('trainer.') else ''}{key}={override_value(value)}")
        tracker = self._tracker()
        out += tracker.train_overrides(round_) if tracker else [f"logger={cfg.logger.name}"]
        return out + policy_overrides(policy, base)

    def _train(self, inputs, policy: str, base: str, pairs_dir: Path, round_: int, extra: list[str]) -> dict:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        from cpo.cli import hydra_sentence

        folder = self.dir / f"round-{round_}" / "train"
        overrides = self._train_overrides(inputs, policy, base, pairs_dir, round_) + extra
        compare = compare_overrides(self.task, round_) if round_ else ["round=0", f"seed={self.cfg.seed}"] + [
            o for o in compare_overrides(self.task, 0) if o.split("=", 1)[0] in ("start_model",)
            or o.startswith("inputs.")]
        self.where = f"round-{round_}/train"
        say(f"round-{round_}/train: " + ("evaluating the start model (0 steps)" if round_ == 0 else f"from {policy}"))
        self.in_training = True
        try:
            return run_training(folder, overrides, compare)
        except (HydraException, OmegaConfBaseException) as e:
            raise ConfigError(f"train settings of round {round_}: {hydra_sentence(e)}") from None
        finally:
            self.in_training = False

    def _decoding(self, round_: int):
        from cpo.mt.sampling import CandidateSettings
        from cpo.rounds.candidates import round_seed

        c = self.cfg.candidates
        try:
            return CandidateSettings(
                num_samples=_positive(c.num_samples, "candidates.num_samples", True),
                num_return_beams=_positive(c.num_return_beams, "candidates.num_return_beams", True),
                num_beams=_positive(c.num_beams, "candidates.num_beams"), temperature=float(c.temperature),
                top_p=float(c.top_p), top_k=_positive(c.top_k, "candidates.top_k", True),
                seed=round_seed(c.seed, round_))
        except ValueError as e:
            raise ConfigError(f"candidates: {str(e).split(' (got ')[0]}") from None

    def _splits(self, rows: dict, round_: int) -> dict:
        return {"train": round_slice(rows["train"], self.per_round, round_), "val": rows["val"]}

    # ------------------------------------------------------------------ the run
    def execute(self) -> dict:
        from cpo.rounds.candidates import run_candidates
        from cpo.rounds.pairs import run_pairs
        from cpo.runs.lock import FolderLock

        self.dir.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(self.dir)
        lock.acquire()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            if self.cfg.rerun:
                self._move_aside()
            inputs = self._inputs()
            rows = {"train": read_rows(inputs.train, "inputs.train"), "val": read_rows(inputs.val, "inputs.val")}
            systems = {split: {name: system_texts(inputs.systems[name][split], len(rows[split]),
                                                  f"inputs.systems.{name}.{split}") for name in self.systems}
                       for split in ("train", "val")}
            base = str(self.cfg.start_model or inputs.start_model or "")
            if not base:
                raise ConfigError("start_model is not set and the inputs name no start model: give start_model=<a "
                                  "model or policy folder>")
            scorer = self._scorer()
            tracker = self._tracker()
            prompt_format = self._prompt_format()
            if self.rule["samples"]:
                self._decoding(1)  # a bad decoding setting is refused before anything runs
            c = self.cfg.candidates
            _check_device(str(c.device), str(c.dtype))  # before anything runs, not at round 1's candidates
            gen = {"batch_size": _positive(c.batch_size, "candidates.batch_size"),
                   "max_new_tokens": _positive(c.max_new_tokens, "candidates.max_new_tokens"),
                   "max_prompt_length": c.max_prompt_length, "logprobs": bool(c.logprobs), "dtype": str(c.dtype),
                   "device": str(c.device), "progress": bool(self.cfg.progress)}
            summary = self._read_summary()
            policy = base
            for k in range(1, self.rounds + 1):
                t0 = time.time()
                splits = self._splits(rows, k)
                round_dir = self.dir / f"round-{k}"
                record_c = None
                if self.rule["samples"]:
                    decode = self._decoding(k)
                    stage = StageFolder(round_dir / "candidates", "candidates", k)
                    settings = {"decoding": asdict(decode), "max_new_tokens": gen["max_new_tokens"],
                                "max_prompt_length": gen["max_prompt_length"], "logprobs": gen["logprobs"],
                                "dtype": gen["dtype"], "policy": _policy_identity(policy),
                                "prompt": prompt_format.describe(),
                                "sources": {s: rows_digest(r) for s, r in splits.items()}}
                    if decode.num_return_beams:  # samples are batch-invariant; beams may differ in the last bits
                        settings["batch_size"] = gen["batch_size"]
                    self.where = stage.name
                    record_c = run_candidates(stage, settings, policy, base, splits, decode, gen, prompt_format,
                                              tracker)
                stage = StageFolder(round_dir / "pairs", "pairs", k)
                settings = {"rule": self.rule, "systems": self.systems, "scorer": scorer.identity,
                            "sources": {s: rows_digest(r) for s, r in splits.items()},
                            "system_files": {f"{n}.{s}": file_fingerprint(inputs.systems[n][s])
                                             for n in self.systems for s in ("train", "val")},
                            "candidates": record_c["fingerprint"] if record_c else None}
                self.where = stage.name
                record_p = run_pairs(stage, settings, splits, systems, round_dir / "candidates", scorer,
                                     self.dir / "scorer_cache", self.rule, tracker)
                if k == 1 and self.cfg.eval_start:
                    self._train(inputs, base, base, stage.path, 0, ["++trainer.max_steps=0", "save_policy=false"])
                results = self._train(inputs, policy, base, stage.path, k, ["save_policy=true"])
                policy = str(self.dir / f"round-{k}" / "train" / "policy")
                summary["rounds"][str(k)] = _round_summary(k, record_c, record_p, results, time.time() - t0)
                self._write_summary(summary)
            return summary
        finally:
            signal.signal(signal.SIGTERM, previous)
            lock.release()

    # ------------------------------------------------------------------ bookkeeping
    def _move_aside(self) -> None:
        from cpo.runs.files import move_into, timestamped_dir

        names = sorted(p.name for p in self.dir.iterdir() if p.name.startswith("round-")
                       or p.name in ("rounds.json", "summary.md"))
        if names:
            dest = timestamped_dir(self.dir, "replaced")
            move_into(self.dir, names, dest)
            say(f"rerun=true: {', '.join(names)} moved into {dest.name}/")

    def _read_summary(self) -> dict:
        path = self.dir / "rounds.json"
        settings = OmegaConf.to_container(self.cfg, resolve=True)
        if path.is_file():
            with contextlib.suppress(OSError, ValueError):
                old = json.loads(path.read_text())
                return {"settings": settings, "rounds": old.get("rounds", {})}
        return {"settings": settings, "rounds": {}}

    def _write_summary(self, summary: dict) -> None:
        atomic_write_json(self.dir / "rounds.json", summary)
        atomic_write_text(self.dir / "summary.md", summary_markdown(summary))


def _check_device(device: str, dtype: str) -> None:
    """candidates.device and candidates.dtype name what this machine has (cpo.train.policy_loading)."""
    from cpo.cli import UsageError
    from cpo.train.policy_loading import pick_device, pick_dtype

    try:
        pick_dtype(dtype, pick_device(device))
    except UsageError as e:
        raise ConfigError(f"candidates.{e}") from None


def _policy_identity(policy: str) -> Any:
    from cpo.train.reference_cache import folder_fingerprint

    folder = Path(policy)
    return folder_fingerprint(folder) if folder.is_dir() else policy


def _round_summary(k: int, cand: dict | None, pairs: dict, results: dict, seconds: float) -> dict:
    after = {key: v for key, v in (results.get("after") or {}).items() if isinstance(v, (int, float))}
    return {"round": k, "candidates": (cand or {}).get("outputs", {}).get("total"),
            "pairs": {s: {x: o.get(x) for x in ("pairs", "sources", "sources_with_pairs", "dropped", "duplicates",
                                                 "chosen_by_kind")} for s, o in pairs["outputs"].items()},
            "global_steps": results.get("global_steps"), "val": results.get("val", {}), "before": results.get("before"),
            "after": after, "seconds": round(seconds, 1)}


def summary_markdown(summary: dict) -> str:
    rounds = [summary["rounds"][k] for k in sorted(summary["rounds"], key=int)]
    metrics = [m for m in ("bleu", "chrf", "ter", "demo_qe", "comet22", "kiwi", "pref_accuracy")
               if any(m in (r.get("after") or {}) for r in rounds)]
    lines = ["# Rounds run", "", "| round | train pairs | sources with a pair | candidates/s | steps | "
             + " | ".join(f"test {m}" for m in metrics) + " |", "|---:|---:|---:|---:|---:|" + "---:|" * len(metrics)]
    if rounds and rounds[0].get("before"):
        b = rounds[0]["before"]
        lines.append("| 0 (start) | | | | 0 | " + " | ".join(_num(b.get(m)) for m in metrics) + " |")
    for r in rounds:
        tp = r["pairs"].get("train", {})
        rate = (r.get("candidates") or {}).get("candidates_per_s")
        lines.append(f"| {r['round']} | {tp.get('pairs')} | {tp.get('sources_with_pairs')} of {tp.get('sources')} | "
                     f"{_num(rate)} | {r.get('global_steps')} | "
                     + " | ".join(_num(r["after"].get(m)) for m in metrics) + " |")
    return "\n".join(lines) + "\n"


def _num(x) -> str:
    return "" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))
