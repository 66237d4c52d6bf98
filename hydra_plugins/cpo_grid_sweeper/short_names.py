"""``${cpo_short:...}``: a sweep job's folder name that a file system accepts.

A job folder is named by its overrides (``hydra.sweep.subdir``); with many overrides the name passes the
255-byte limit of a file name and the job fails before it starts. Names over ``limit`` characters keep
their start and end a short hash of the whole, so they stay unique and recognisable. Registered when
Hydra's plugin scan imports this module, before any config is resolved.
"""
import hashlib

from omegaconf import OmegaConf


def short_name(text: str, limit: int = 120) -> str:
    text = str(text) or "default"  # a job with no overrides of its own
    if len(text) <= limit:
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    return f"{text[:limit - 11]}-{digest}"


if not OmegaConf.has_resolver("cpo_short"):
    OmegaConf.register_new_resolver("cpo_short", short_name)
