"""A model, or an adapter on its base, loaded to generate with: scripts/generate.py and the candidates stage of a
rounds run (cpo.rounds). Settings checked before anything loads (``device``, ``dtype``), and every refusal of the
libraries (a missing or damaged file, a hub name that cannot be fetched) as one sentence.
"""
from __future__ import annotations

from pathlib import Path

from cpo.cli import UsageError


def _has_tokenizer(folder: str) -> bool:
    p = Path(folder)
    return p.is_dir() and any((p / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json", "tokenizer.model"))


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device={device}, but no CUDA device is available (use device=cpu or auto)")
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise UsageError(f"device={device} is not one of auto, cpu, cuda, cuda:N")
    return device


def pick_dtype(dtype: str, device: str) -> str:
    import torch

    from cpo.train.models import DTYPES

    if dtype != "auto":
        if dtype not in DTYPES:
            raise UsageError(f"dtype={dtype} is not one of auto, {', '.join(DTYPES)}")
        return dtype
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def _short(e: BaseException, limit: int = 300) -> str:
    """An exception's first line, cut: some libraries' messages list hundreds of names."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def load_for_generation(model: str, adapter: str | None, dtype: str, device: str, merge_adapter: bool = True,
                        check_tokenizer=None):
    """(model on ``device`` in eval mode, tokenizer); the tokenizer comes from the adapter folder when it has one.
    ``check_tokenizer(tokenizer)`` runs before the model is loaded (a prompt format refusing the tokenizer)."""
    from cpo.io import Unavailable
    from cpo.train.models import load_causal_lm, load_tokenizer

    def unavailable(e: Exception) -> Exception:
        if isinstance(e, (Unavailable, FileNotFoundError)):
            return e
        return Unavailable(f"model={model}: cannot load it ({type(e).__name__}: {_short(e)})")

    try:
        with_tokenizer = adapter if adapter and _has_tokenizer(adapter) else None
        tokenizer = load_tokenizer(with_tokenizer or model, key="adapter" if with_tokenizer else "model")
    except (OSError, ValueError) as e:
        raise unavailable(e) from None
    if check_tokenizer is not None:
        check_tokenizer(tokenizer)
    try:
        lm = load_causal_lm(model, dtype, key="model")
    except (OSError, ValueError) as e:
        raise unavailable(e) from None
    if adapter:
        from peft import PeftModel

        from cpo.hub import hub_files_only
        from cpo.train.models import damaged_weights

        local = hub_files_only("adapter", adapter)  # a hub name while the hub cannot be used: one sentence, now
        try:
            lm = PeftModel.from_pretrained(lm, adapter, local_files_only=local)
        except Exception as e:  # noqa: BLE001 - the known refusals (and a damaged file) as one sentence
            if not (isinstance(e, (OSError, ValueError, KeyError, RuntimeError)) or damaged_weights(e)):
                raise
            raise Unavailable(f"adapter={adapter}: cannot load it onto {model} "
                              f"({type(e).__name__}: {_short(e)})") from None
        if merge_adapter:
            lm = lm.merge_and_unload()
    return lm.to(device).eval(), tokenizer
