"""Training-throughput benchmark: SFT, CPO, DPO (live and cached reference), optionally against TRL.

What one measurement is
    A *step* is forward + backward + gradient clipping (1.0) + AdamW step + zero_grad on one
    pre-collated batch (data loading excluded, for TRL too: its step is timed from the Trainer's
    ``on_step_begin`` to ``on_step_end`` callbacks, which bracket exactly the same work plus TRL's
    own metric bookkeeping). A *chunk* is ``steps`` consecutive steps on the same ``steps`` batches;
    every implementation runs one chunk per repetition, repetitions are interleaved (our order is
    rotated every repetition; with TRL, its chunk runs inside ``trainer.train()`` and ours run
    from its callback between its chunks) and the first ``warmup`` repetitions are discarded. Reported: min
    and median over repetitions of pairs/s and completion tokens/s.

FLOPs (``flops.py``)
    Executed model FLOPs on real (non-pad) tokens, compared with a square matmul peak measured in the
    same process at the same thread count and precision (fp32, or bf16 with ``precision="bf16"``).

Memory (``memory.py``)
    Peak RSS per implementation in fresh subprocesses (CPU), peak CUDA memory (GPU), and the exact
    size of the tensors saved for the backward.

Sharing the prompt
    ``shared_prompt`` runs each prompt once instead of once per side: through PreferenceModule's
    KV-cache route (cpo.train.logprobs.completion_logps_shared_prompt), or with ``packed`` (the module's
    default) through one forward over [prompt; chosen; rejected] with a 4D attention mask
    (cpo.train.logprobs.completion_logps_packed).

LoRA and bf16 (``policies.py``)
    ``lora_r`` trains LoRA adapters on a frozen base shared by every implementation (ALMA-R's
    setting; what fits a 7B or 13B on one GPU); ``precision="bf16"`` stores the weights in bf16 and
    computes under bf16 autocast, as the project's ``model.dtype=bfloat16 trainer.precision=bf16-mixed``.
    ``lengths="alma_r"`` draws token lengths from ALMA-R's data (``lengths.py``).

Fairness with TRL
    Same initial weights (deep copies, or adapters initialised alike), same pairs in the same order
    (TRL's sampler made sequential), same prompt and completion strings (token ids checked equal),
    same batch size, the same AdamW object type and settings passed to the Trainer, clipping at 1.0
    on both sides, the same precision, sigmoid loss with beta 0.1 and alpha 1.0, and gradient
    checkpointing off on both sides unless ``gradient_checkpointing`` (TRL's CPOConfig turns it on
    by default).

Modules: ``workload`` (shapes, tokenizer, pairs, batches), ``lengths`` (ALMA-R's token lengths),
``flops``, ``policies`` (full copies or shared-base LoRA), ``ours``, ``trl_impl``, ``memory``,
``runner`` (the measuring loop), ``report`` (the text table), ``generation`` (beam search; N candidates per source).
"""

import importlib

# Loaded on first use, so that the GPU check's driver (scripts/gpu_check.py) can import
# cpo.bench.gpu_report without torch.
_EXPORTS = {
    "flops": ("Lora", "Work", "matmul_peak", "ours_work", "seg_flops", "trl_work", "_seg_flops"),
    "generation": ("run_candidates_bench", "run_generation_bench"),
    "memory": ("memory_probe", "probe_memory_subprocess", "saved_activation_mb"),
    "ours": ("FullLogits", "OursImpl", "Variant"),
    "policies": ("FullCopies", "SharedLora", "make_optimizer"),
    "report": ("format_model",),
    "runner": ("FORWARDS", "BenchArgs", "bench_model", "ratios", "run_train_bench"),
    "trl_impl": ("TrlImpl", "compare_first_batch", "trl_available"),
    "workload": (
        "LENGTHS",
        "LOSSES",
        "MODELS",
        "ModelSpec",
        "Workload",
        "build_model",
        "build_tokenizer",
        "make_examples",
        "make_workload",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'cpo.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cpo.bench.{_WHERE[name]}"), name)
