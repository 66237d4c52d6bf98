"""Translate an input file with a causal LM, optionally through a peft adapter (Hydra app; conf/generate.yaml).

The model is a hub name or a local folder (``model=<value>``, rewritten before Hydra parses the
command line into ``model=hf model.name_or_path=<value>``, since ``model`` is the conf/model
config group) or a preset of conf/model. ``adapter=`` (or a model folder holding
``adapter_config.json``, such as a trained run's saved policy) adds a LoRA adapter whose base is
the model when one is given, else the base named in the adapter's config. Input formats are those of
``cpo.parallel``; the output has one hypothesis per input line, aligned, written atomically.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from cpo.io import atomic_write_lines, check_writable
from cpo.parallel import read_parallel

log = logging.getLogger("generate")


def _abs(value, field: str) -> str:
    if value in (None, ""):
        raise ValueError(f"{field}= is not set (see conf/generate.yaml)")
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
            raise FileNotFoundError(f"{field}={name}: {local} is a file, not a model folder")
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
            raise ValueError("model= is not set (a hub name or a local model folder; see conf/generate.yaml)")
        return model_path, None
    config_file = Path(adapter) / "adapter_config.json"
    if Path(adapter).is_dir() and not config_file.is_file():
        raise FileNotFoundError(f"adapter={given}: {adapter} has no adapter_config.json (is it a peft adapter folder?)")
    if model_path is None:
        if not config_file.is_file():
            raise ValueError(f"adapter={adapter} is a hub name; give its base model with model=")
        base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{config_file}: no base_model_name_or_path; give the base model with model=")
        if not Path(base).exists() and not _looks_like_hub_name(base):
            raise FileNotFoundError(
                f"{config_file}: its base model {base} does not exist here; give the base model with model="
            )
        model_path = base
    return model_path, adapter


def _has_tokenizer(folder: str) -> bool:
    p = Path(folder)
    return p.is_dir() and any((p / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json", "tokenizer.model"))


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device}, but no CUDA device is available (use device=cpu or auto)")
    return device


def pick_dtype(dtype: str, device: str) -> str:
    import torch

    if dtype != "auto":
        return dtype
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def load_for_generation(model: str, adapter: str | None, dtype: str, device: str, merge_adapter: bool = True):
    """(model on ``device`` in eval mode, tokenizer); the tokenizer comes from the adapter folder when it has one."""
    from cpo.models import load_causal_lm, load_tokenizer

    try:
        tokenizer = load_tokenizer(adapter if adapter and _has_tokenizer(adapter) else model)
        lm = load_causal_lm(model, dtype)
    except OSError as e:
        raise OSError(f"cannot load model {model!r}: it is not a local model folder and the hub did not answer ({e})") from e
    if adapter:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, adapter, local_files_only=Path(adapter).exists())
        if merge_adapter:
            lm = lm.merge_and_unload()
    return lm.to(device).eval(), tokenizer


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
            raise ValueError(
                "model=tiny names the training app's embedded demo model; pass the folder of a saved model instead"
            )
        lora = model_cfg.get("lora")
        if lora is not None and lora.get("adapter"):
            adapter = str(lora.adapter)
    if cfg.get("adapter"):
        adapter = str(cfg.adapter)
    return (str(name) if name else None), adapter


def run(cfg: DictConfig) -> dict:
    """The whole job; returns a summary (output path, count, direction, timings)."""
    from cpo.generation import translate

    t0 = time.time()
    output = Path(_abs(cfg.output, "output"))
    check_writable(output, bool(cfg.overwrite))  # before any loading: fail in a second, not in minutes
    data = read_parallel(
        _abs(cfg.input, "input"),
        format=cfg.format,
        src_lang=cfg.src_lang,
        tgt_lang=cfg.tgt_lang,
        references="ignore",
    )
    model_path, adapter = resolve_model_and_adapter(*model_settings(cfg))
    device = pick_device(str(cfg.device))
    dtype = pick_dtype(str(cfg.dtype), device)
    log.info("model %s%s, %s on %s", model_path, f" + adapter {adapter}" if adapter else "", dtype, device)
    lm, tokenizer = load_for_generation(model_path, adapter, dtype, device, bool(cfg.merge_adapter))
    t_gen = time.time()
    hyps = translate(
        lm,
        tokenizer,
        data.sources,
        data.src_lang,
        data.tgt_lang,
        batch_size=int(cfg.batch_size),
        num_beams=int(cfg.num_beams),
        max_new_tokens=int(cfg.max_new_tokens),
        progress=bool(cfg.progress),
    )
    gen_s = time.time() - t_gen
    hyps = [one_line(h) for h in hyps]
    check_writable(output, bool(cfg.overwrite))  # another run may have written it meanwhile
    atomic_write_lines(output, hyps)
    empty = [i + 1 for i, h in enumerate(hyps) if not h.strip()]
    if empty:
        log.warning("%d empty hypotheses (input lines %s%s)", len(empty), ", ".join(map(str, empty[:10])), " ..." if len(empty) > 10 else "")
    return {
        "output": str(output),
        "n": len(hyps),
        "direction": data.direction,
        "model": model_path,
        "adapter": adapter,
        "empty": len(empty),
        "run_time_s": time.time() - t0,
        "generate_s": gen_s,
    }


@hydra.main(config_path="../conf", config_name="generate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out = run(cfg)
    print(
        f"wrote {out['n']} translations ({out['direction']}) to {out['output']} in {out['run_time_s']:.1f}s "
        f"({out['n'] / max(out['generate_s'], 1e-9):.1f} sentences/s generating)"
    )


if __name__ == "__main__":
    sys.argv[1:] = rewrite_model_argument(sys.argv[1:])
    main()
