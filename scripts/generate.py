"""Translate with a causal LM, optionally through a peft adapter (Hydra app; conf/generate.yaml).

The model is a hub name or a local folder (``model=<value>``, rewritten before Hydra parses the
command line into ``model=hf model.name_or_path=<value>``, since ``model`` is the conf/model
config group) or a preset of conf/model. ``adapter=`` (or a model folder holding
``adapter_config.json``, such as a trained run's saved policy) adds a LoRA adapter whose base is
the model when one is given, else the base named in the adapter's config. The model is loaded once.

Three input modes, as in the other apps: one file (``input=``, ``output=``); several directions
(``directions={de-en: {input, format, output}}``); the WMT'22 layout (``wmt22.root=``,
``wmt22.directions=``), written in the WMT'22 system layout ``<output_dir>/<pair>/test.<s>-<t>.<t>``
that ``scripts/evaluate.py wmt22.system=<output_dir>`` reads. Input formats are those of
``cpo.mt.parallel``. Each output has one hypothesis per input line, aligned, written atomically (with N
candidates per source, ``num_samples`` / ``num_return_beams``, a JSONL row per source: ``cpo.mt.candidates``); every
output is checked (a file path in a folder that can be written, not there yet unless
``overwrite=true``) before the model is loaded. Prompts are built and cut as in training
(``max_prompt_length``) by the prompt format (``prompt=``, conf/prompt; by default the one a trained policy
recorded in its ``cpo_prompt.json``, else ALMA's), generation stops at its stop ids and outputs are cleaned
by its rule (``cpo.mt.generation``).
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from cpo.cli import UsageError, one_sentence_errors, run_app
from cpo.mt.evaluation import WMT22_DIRECTIONS
from cpo.io import DataError, atomic_write_lines, atomic_write_text, check_writable
from cpo.languages import language_pair
from cpo.mt.parallel import FORMATS, ParallelData, read_parallel
from cpo.train.policy_loading import load_for_generation, pick_device, pick_dtype

log = logging.getLogger("generate")

def _abs(value, field: str) -> str:
    if value in (None, ""):
        raise UsageError(f"{field}= is not set (see conf/generate.yaml)")
    return to_absolute_path(str(value))


def _looks_like_hub_name(name: str) -> bool:
    """``owner/name`` (one slash, no path prefix) is a hub name when no such local folder exists."""
    return name.count("/") == 1 and not name.startswith(("/", ".", "~")) and "\\" not in name


def resolve_model_path(name: str, field: str) -> str:
    """A local folder (absolute) if one exists at ``name`` (relative to the launch dir), else a hub name.

    A path-like name that does not exist is an error naming it: nothing is downloaded because
    of a typo in a local path.
    """
    local = Path(to_absolute_path(str(Path(name).expanduser())))
    if local.exists():
        if not local.is_dir():
            raise NotADirectoryError(f"{field}={name}: {local} is a file, not a model folder")
        if not any((local / f).is_file() for f in ("config.json", "adapter_config.json")):
            raise FileNotFoundError(f"{field}={name}: {local} holds neither config.json nor adapter_config.json; "
                                    "give a model folder (save_pretrained's output, e.g. a run's policy/)")
        return str(local)
    if _looks_like_hub_name(name):
        return name
    raise FileNotFoundError(f"{field}={name}: {local} does not exist (and it is not a hub name like owner/model)")


def resolve_model_and_adapter(model: str | None, adapter: str | None) -> tuple[str, str | None]:
    """(base model, adapter folder or None) from the two settings (see the module docstring)."""
    model_path = resolve_model_path(model, "model") if model else None
    given = adapter
    if adapter is None and model_path and (Path(model_path) / "adapter_config.json").is_file():
        adapter, model_path = model_path, None
    elif adapter is not None:
        adapter = resolve_model_path(adapter, "adapter")
    if adapter is None:
        if model_path is None:
            raise UsageError("model= is not set (a hub name or a local model folder; see conf/generate.yaml)")
        return model_path, None
    config_file = Path(adapter) / "adapter_config.json"
    if Path(adapter).is_dir() and not config_file.is_file():
        raise FileNotFoundError(f"adapter={given}: {adapter} has no adapter_config.json (is it a peft adapter folder?)")
    if model_path is None:
        if not config_file.is_file():
            raise UsageError(f"adapter={adapter} is a hub name; give its base model with model=")
        try:
            base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise DataError(f"{config_file}: not a readable adapter config ({e}); "
                            "give the base model with model=") from None
        if not base:
            raise UsageError(f"{config_file}: no base_model_name_or_path; give the base model with model=")
        if not Path(base).exists() and not _looks_like_hub_name(base):
            raise FileNotFoundError(
                f"{config_file}: its base model {base} does not exist here; give the base model with model="
            )
        model_path = base
    return model_path, adapter


_LINE_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+")


def one_line(text: str) -> str:
    """Any character that some reader would take for a line break becomes a space (alignment is sacred)."""
    return _LINE_BREAKS.sub(" ", text).strip()


MODEL_PRESETS = Path(__file__).resolve().parents[1] / "conf" / "model"


def rewrite_model_argument(argv: list[str]) -> list[str]:
    """``model=<hub name or path>`` -> ``model=hf model.name_or_path=<it>``; preset names pass unchanged."""
    presets = {p.stem for p in MODEL_PRESETS.glob("*.yaml")}
    out = []
    for arg in argv:
        if arg.startswith("model=") and "," not in arg:
            value = arg[len("model="):].strip("'\"")
            if value and value not in presets and value != "null":
                out += ["model=hf", f"model.name_or_path={value}"]
                continue
        out.append(arg)
    return out


def model_settings(cfg: DictConfig) -> tuple[str | None, str | None]:
    """(model name or path, adapter) from the model group and adapter=."""
    model_cfg = cfg.get("model")
    name = adapter = None
    if model_cfg is not None:
        name = model_cfg.get("name_or_path")
        if name == "demo":
            raise UsageError(
                "model=tiny names the training app's embedded demo model; pass the folder of a saved model instead"
            )
        lora = model_cfg.get("lora")
        if lora is not None and lora.get("adapter"):
            adapter = str(lora.adapter)
    if cfg.get("adapter"):
        adapter = str(cfg.adapter)
    return (str(name) if name else None), adapter


def choose_prompt_format(node, model_path: str, adapter: str | None):
    """The prompt format to translate with: ``prompt=`` when the command line gives one, else the one the policy
    recorded (``cpo_prompt.json`` in the adapter or model folder), else ALMA's. A format given that differs from
    the recorded one is used, with a warning naming both."""
    from cpo.mt.prompt import build_prompt_format, read_prompt_record, short_description

    recorded = None
    for folder in (adapter, model_path):
        if folder and Path(folder).is_dir():
            recorded = read_prompt_record(folder)
            if recorded is not None:
                break
    if node is None:
        if recorded is not None:
            log.info("prompt format %s, as recorded in %s", short_description(recorded[0].describe()), recorded[1])
            return recorded[0]
        return build_prompt_format(None)
    given = build_prompt_format(node)
    if recorded is not None and recorded[0] != given:
        log.warning("%s records the prompt format the policy was trained with, %s; translating with %s as the "
                    "command line says (leave prompt= out to use the recorded one)", recorded[1],
                    short_description(recorded[0].describe()), short_description(given.describe()))
    return given


# --------------------------------------------------------------------------- inputs and outputs
@dataclass
class Task:
    """One direction: its sources and where its translations go."""

    direction: str
    data: ParallelData
    output: Path
    key: str  # the setting that named the output, for messages


def wmt22_layout_output(output_dir: Path, direction: str) -> Path:
    """Where a system's output for a direction lies in the WMT'22 layout (``cpo.mt.evaluation.wmt22_directions``)."""
    s, t = direction.split("-")
    return output_dir / f"{s}{t}" / f"test.{s}-{t}.{t}"


def _read(path, fmt, src, tgt, key: str) -> ParallelData:
    if fmt not in FORMATS:
        raise UsageError(f"{key}: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return read_parallel(path, format=fmt, src_lang=src, tgt_lang=tgt, references="ignore", key=key)


def collect_tasks(cfg: DictConfig) -> list[Task]:
    """The tasks of whichever single input mode the config uses (see conf/generate.yaml)."""
    wmt = cfg.get("wmt22") or {}
    modes = {
        "input": cfg.get("input") not in (None, ""),
        "directions": bool(cfg.get("directions")),
        "wmt22": bool(wmt.get("root")),
    }
    chosen = [m for m, on in modes.items() if on]
    if len(chosen) != 1:
        raise UsageError("give exactly one input mode: input= (+ output=), directions={<src>-<tgt>: {input, output}}, "
                         f"or wmt22.root= (+ output_dir=); got {chosen or 'none'} (see conf/generate.yaml)")
    mode = chosen[0]
    output_dir = Path(_abs(cfg.output_dir, "output_dir")) if cfg.get("output_dir") not in (None, "") else None
    if mode == "input":
        if cfg.get("output") in (None, ""):
            raise UsageError("output= is not set: the file to write the translations to (see conf/generate.yaml)")
        data = _read(_abs(cfg.input, "input"), cfg.format, cfg.get("src_lang"), cfg.get("tgt_lang"), "input")
        return [Task(data.direction, data, Path(_abs(cfg.output, "output")), "output")]
    if cfg.get("output") not in (None, ""):
        raise UsageError(f"output= belongs to the one-file mode; in {mode} mode give output_dir= "
                         "(or, with directions, an output per direction)")
    tasks = []
    if mode == "directions":
        for direction, spec in cfg.directions.items():
            where = f"directions.{direction}"
            src, tgt = language_pair(direction, "directions")
            if not isinstance(spec, DictConfig):
                raise UsageError(f"{where}: expected {{input, format, output}}, got {spec!r}")
            unknown = set(spec) - {"input", "format", "output"}
            if unknown:
                raise UsageError(f"{where}: unknown key(s) {sorted(unknown)} (known: input, format, output)")
            data = _read(_abs(spec.get("input"), f"{where}.input"), spec.get("format") or "auto", src, tgt,
                         f"{where}.input")
            if spec.get("output") not in (None, ""):
                output, key = Path(_abs(spec.output, f"{where}.output")), f"{where}.output"
            elif output_dir is not None:
                output, key = wmt22_layout_output(output_dir, str(direction)), "output_dir"
            else:
                raise UsageError(f"{where}.output is not set (or give output_dir= for the WMT'22 layout)")
            tasks.append(Task(str(direction), data, output, key))
        return tasks
    root = Path(_abs(wmt.root, "wmt22.root"))
    if output_dir is None:
        raise UsageError("wmt22 mode writes <output_dir>/<pair>/test.<s>-<t>.<t>: give output_dir= "
                         "(e.g. outputs/my-system; then scripts/evaluate.py wmt22.system=$PWD/outputs/my-system)")
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise (NotADirectoryError if root.exists() else FileNotFoundError)(
            f"wmt22.root={root}: {what}; give the WMT'22 folder that holds wmt-testset/")
    if not (root / "wmt-testset").is_dir():
        raise FileNotFoundError(f"wmt22.root={root}: not a WMT'22 folder (no wmt-testset/ inside)")
    directions = [str(d) for d in (wmt.get("directions") or WMT22_DIRECTIONS)]
    if len(set(directions)) != len(directions):
        raise UsageError(f"wmt22.directions lists a direction twice: {directions}")
    for d in directions:
        s_, t_ = language_pair(d, "wmt22.directions")
        source = root / "wmt-testset" / f"{s_}{t_}" / f"test.{d}.{s_}"
        if not source.is_file():
            raise FileNotFoundError(f"{source}: missing source file for direction {d} (wmt22.directions)")
        data = _read(source, "text", s_, t_, "wmt22.root")
        tasks.append(Task(d, data, wmt22_layout_output(output_dir, d), "output_dir"))
    return tasks


def _made_by(output: Path) -> Path:
    """The record of what wrote an output (model, adapter, decoding), beside it and hidden."""
    return output.parent / f".{output.name}.generation.json"


def _as_written(earlier: dict | None) -> dict | None:
    """A record written before generate.py recorded the prompt format: it was ALMA's."""
    if isinstance(earlier, dict) and "prompt" not in earlier:
        from cpo.mt.prompt import AlmaPrompt

        return {**earlier, "prompt": AlmaPrompt().describe()}
    return earlier


def check_outputs(tasks: list[Task], overwrite: bool, skip_existing: bool,
                  made_by: dict | None = None) -> tuple[list[Task], list[Task]]:
    """(tasks to run, tasks skipped because their output exists, written with the same ``made_by``);
    refuses before anything is loaded."""
    seen: dict[Path, str] = {}
    for t in tasks:
        if t.output in seen:
            raise UsageError(f"{t.key}: directions {seen[t.output]} and {t.direction} would both write {t.output}")
        seen[t.output] = t.direction
    todo, skipped = [], []
    for t in tasks:
        if skip_existing and t.output.is_file():
            try:
                earlier = _as_written(json.loads(_made_by(t.output).read_text(encoding="utf-8")))
            except (OSError, ValueError):
                earlier = None
            if earlier != made_by:  # another model or decoding: a system folder must not mix two of them
                now, then = made_by or {}, earlier or {}
                differ = sorted(k for k in {*now, *then} if then.get(k) != now.get(k)) if earlier else []
                raise UsageError(f"{t.key}: {t.output} exists but was not written with these settings "
                                 f"({', '.join(differ) or 'no record of them'}), so skip_existing=true cannot keep it: "
                                 f"pass overwrite=true, or write to another output_dir")
            skipped.append(t)
            continue
        check_writable(t.output, overwrite, t.key)
        todo.append(t)
    return todo, skipped


def _positive(cfg: DictConfig, key: str, allow_none: bool = False) -> int | None:
    value = cfg.get(key)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{key}={value} must be a positive integer" + (" (or null)" if allow_none else ""))
    return int(value)


# --------------------------------------------------------------------------- N candidates per source
def candidate_settings(cfg: DictConfig, num_beams: int):
    """The N-candidate decoding (cpo.mt.sampling) when asked for (num_samples > 0, num_return_beams != 1 or
    logprobs), else None: today's one beam-search output per source, one line each."""
    from cpo.mt.sampling import CandidateSettings

    k, r = cfg.get("num_samples", 0), cfg.get("num_return_beams", 1)
    for key, value in (("num_samples", k), ("num_return_beams", r)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"{key}={value} must be an integer >= 0")
    if k == 0 and r == 1 and not cfg.get("logprobs", False):
        return None
    s = cfg.get("sampling") or {}
    try:
        return CandidateSettings(num_samples=k, num_return_beams=r, num_beams=num_beams,
                                 temperature=float(s.get("temperature", 1.0)), top_p=float(s.get("top_p", 1.0)),
                                 top_k=int(s.get("top_k", 0)), seed=int(s.get("seed", 0)))
    except ValueError as e:
        raise UsageError(f"sampling settings: {str(e).split(' (got ')[0]} (see conf/generate.yaml)") from None


def write_candidates(lm, tokenizer, t: Task, candidates, cfg: DictConfig, settings: dict,
                     max_prompt_length: int | None, prompt_format) -> dict:
    """One direction's candidates: a JSONL row per source (cpo.mt.candidates), or, for one candidate per source
    without log-probs, one line per source as usual."""
    from cpo.io import atomic_write_jsonl
    from cpo.mt.candidates import candidate_row
    from cpo.mt.sampling import GenerationStats, generate_candidates

    stats = GenerationStats()
    out = generate_candidates(lm, tokenizer, t.data.sources, t.data.src_lang, t.data.tgt_lang, candidates,
                              batch_size=settings["batch_size"], max_new_tokens=settings["max_new_tokens"],
                              max_prompt_length=max_prompt_length, logprobs=bool(cfg.get("logprobs", False)),
                              progress=bool(cfg.progress), stats=stats, prompt_format=prompt_format)
    check_writable(t.output, bool(cfg.overwrite), t.key)
    texts = [[one_line(c) for c in o["candidates"]] for o in out]
    if candidates.n == 1 and not cfg.get("logprobs", False):
        atomic_write_lines(t.output, [c[0] for c in texts])
    else:
        atomic_write_jsonl(t.output, [candidate_row(src, t.data.src_lang, t.data.tgt_lang, c, o.get("logprobs"),
                                                    o["origins"]) for src, c, o in zip(t.data.sources, texts, out)])
    log.info("%s: wrote %d candidates for %d sources to %s in %.1fs (%d duplicates, %d empty; %.1f sentences/s, "
             "%.1f candidates/s)", t.direction, stats.candidates, stats.sources, t.output, stats.seconds,
             stats.duplicates, stats.empty, stats.sentences_per_s, stats.candidates_per_s)
    return {"direction": t.direction, "input": str(t.data.path), "output": str(t.output), "n": stats.sources,
            "candidates": stats.candidates, "duplicates": stats.duplicates, "empty": stats.empty,
            "cleaning": dict(stats.cleaning or {}), "generate_s": round(stats.seconds, 3)}


# --------------------------------------------------------------------------- the job
def run(cfg: DictConfig) -> dict:
    """The whole job; returns a summary (per direction: output, count, empties, cleaning; timings)."""
    from cpo.mt.generation import translate
    from cpo.mt.prompt import PromptTooShort

    t0 = time.time()
    settings = {k: _positive(cfg, k) for k in ("batch_size", "num_beams", "max_new_tokens")}
    candidates = candidate_settings(cfg, settings["num_beams"])  # None: one beam-search output per source
    max_prompt_length = _positive(cfg, "max_prompt_length", allow_none=True)
    if max_prompt_length is not None and max_prompt_length < 2:
        raise UsageError(f"max_prompt_length={max_prompt_length}: BOS and the cue alone need more (ALMA-R uses 256)")
    tasks = collect_tasks(cfg)
    limit = _positive(cfg, "max_sentences", allow_none=True)
    if limit is not None:  # a smoke test: the first N sources of each direction
        for t in tasks:
            log.info("%s: max_sentences=%d: translating the first %d of %d sources", t.direction, limit,
                     min(limit, len(t.data)), len(t.data))
            t.data = replace(t.data, sources=t.data.sources[:limit],
                             references=t.data.references[:limit] if t.data.references is not None else None)
    skip_existing = bool(cfg.get("skip_existing", False))
    if not skip_existing:  # an output in the way is refused before the model is even looked for
        check_outputs(tasks, bool(cfg.overwrite), False)
    model_path, adapter = resolve_model_and_adapter(*model_settings(cfg))
    prompt_format = choose_prompt_format(cfg.get("prompt"), model_path, adapter)
    made_by = {"model": model_path, "adapter": adapter, "num_beams": settings["num_beams"],
               "max_new_tokens": settings["max_new_tokens"], "max_prompt_length": max_prompt_length,
               "prompt": prompt_format.describe(),
               **({"max_sentences": limit} if limit is not None else {})}  # a partial output is never kept as whole
    if candidates is not None:
        made_by.update(candidates=asdict(candidates), logprobs=bool(cfg.get("logprobs", False)))
    todo, skipped = check_outputs(tasks, bool(cfg.overwrite), skip_existing, made_by)
    for t in skipped:
        log.info("%s: %s exists, written with these settings: skipped (skip_existing=true)", t.direction, t.output)
    device = pick_device(str(cfg.device))
    dtype = pick_dtype(str(cfg.dtype), device)
    summary: dict = {"model": model_path, "adapter": adapter, "prompt": prompt_format.describe(), "directions": [],
                     "skipped": [str(t.output) for t in skipped]}
    if todo:
        log.info("model %s%s, %s on %s", model_path, f" + adapter {adapter}" if adapter else "", dtype, device)
        lm, tokenizer = load_for_generation(model_path, adapter, dtype, device, bool(cfg.merge_adapter),
                                            check_tokenizer=prompt_format.check)
        prompts = prompt_format.bind(tokenizer, max_prompt_length, "left")
        try:  # a budget that keeps none of a source fails here, before any generation time is spent
            for t in todo:
                for source in t.data.sources:
                    prompts.encode(source, t.data.src_lang, t.data.tgt_lang)
        except PromptTooShort as e:
            raise UsageError(f"max_prompt_length={max_prompt_length}: {e}") from None
    for t in todo:
        t_gen = time.time()
        cleaning: Counter = Counter()
        if candidates is not None:  # N candidates per source (or one sample / log-probs): see write_candidates
            summary["directions"].append(write_candidates(lm, tokenizer, t, candidates, cfg, settings,
                                                          max_prompt_length, prompt_format))
            atomic_write_text(_made_by(t.output), json.dumps(made_by, sort_keys=True) + "\n")
            continue
        hyps = translate(lm, tokenizer, t.data.sources, t.data.src_lang, t.data.tgt_lang, progress=bool(cfg.progress),
                         max_prompt_length=max_prompt_length, cleaning=cleaning, prompt_format=prompt_format,
                         **settings)
        gen_s = time.time() - t_gen
        hyps = [one_line(h) for h in hyps]
        check_writable(t.output, bool(cfg.overwrite), t.key)  # another run may have written it meanwhile
        atomic_write_lines(t.output, hyps)
        atomic_write_text(_made_by(t.output), json.dumps(made_by, sort_keys=True) + "\n")
        empty = [i + 1 for i, h in enumerate(hyps) if not h.strip()]
        if empty:
            log.warning("%s: %d empty translations (input lines %s%s); they are kept, aligned, as empty lines",
                        t.direction, len(empty), ", ".join(map(str, empty[:10])), " ..." if len(empty) > 10 else "")
        if cleaning.get("prompt_truncated"):
            log.info("%s: %d prompts left-truncated to max_prompt_length=%s tokens, as in training",
                     t.direction, cleaning["prompt_truncated"], max_prompt_length)
        summary["directions"].append({
            "direction": t.direction, "input": str(t.data.path), "output": str(t.output), "n": len(hyps),
            "empty": len(empty), "cleaning": dict(cleaning), "generate_s": round(gen_s, 3),
        })
        log.info("%s: wrote %d translations to %s in %.1fs", t.direction, len(hyps), t.output, gen_s)
    done = summary["directions"]
    summary.update(
        n=sum(d["n"] for d in done), empty=sum(d["empty"] for d in done),
        generate_s=sum(d["generate_s"] for d in done), run_time_s=time.time() - t0,
        candidates=sum(d.get("candidates", d["n"]) for d in done),
    )
    if len(tasks) == 1 and done:  # the one-file mode's summary, flat
        summary.update(output=done[0]["output"], direction=done[0]["direction"])
    return summary


@hydra.main(config_path="../conf", config_name="generate", version_base="1.3")
@one_sentence_errors
def main(cfg: DictConfig) -> None:
    from cpo.console import say  # the summary in generate.log too, not only on the console

    out = run(cfg)
    for d in out["directions"]:
        many = f"{d['candidates']} candidates for " if "candidates" in d else ""
        say(f"wrote {many}{d['n']} {'sources' if many else 'translations'} ({d['direction']}) to {d['output']}"
            + (f", {d['duplicates']} duplicates" if d.get("duplicates") else "")
            + (f", {d['empty']} empty" if d["empty"] else ""))
    if out["skipped"]:
        say(f"skipped {len(out['skipped'])} existing output(s) (skip_existing=true)")
    rate = max(out["generate_s"], 1e-9)
    say(f"{len(out['directions'])} direction(s), {out['n']} sources in {out['run_time_s']:.1f}s "
        f"({out['n'] / rate:.1f} sentences/s" + (f", {out['candidates'] / rate:.1f} candidates/s" if out["candidates"]
                                                 != out["n"] else "") + " generating)")


if __name__ == "__main__":
    sys.argv[1:] = rewrite_model_argument(sys.argv[1:])
    run_app(main)
