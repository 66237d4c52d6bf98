"""Training throughput and peak memory of SFT / CPO / DPO (live and cached reference), optionally vs TRL.

    python scripts/bench.py                                  # demo and h256, batch 8, 1 thread
    python scripts/bench.py --model h256 --against trl       # + TRL's CPOTrainer, same weights and batches
    python scripts/bench.py --model h256 --levers            # + each speed lever on/off
    python scripts/bench.py --generation                     # batched vs one-at-a-time beam search; N candidates
    # ALMA-R's setting on a GPU: 7B shape, LoRA r16 on down_proj, bf16, batch 2, ALMA-R's token lengths
    python scripts/bench.py --model 7b --lora-r 16 --precision bf16 --batch-size 2 --lengths alma_r --against trl
    # A large vocabulary: chunked log-probs (the default, logps.chunk_tokens=auto) vs full logits vs TRL
    python scripts/bench.py --model h256 --vocab-size 128256 --lora-r 16 --lengths alma_r --batch-size 8 \
        --loss cpo --chunk-tokens null --against trl

The last line printed is a JSON summary. See cpo/bench/ for what is measured and how.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # torchmetrics, imported by lightning


def _chunk_tokens(text: str) -> int | str | None:
    if text in ("null", "none", "None"):
        return None
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of tokens, null or auto")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    from cpo.bench import FORWARDS, LENGTHS, LOSSES, MODELS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["demo", "h256"], choices=sorted(MODELS), help="model configs to run")
    p.add_argument("--batch-size", type=int, default=8, help="preference pairs per step")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--reps", type=int, default=5, help="measured repetitions (after --warmup)")
    p.add_argument("--warmup", type=int, default=1, help="discarded repetitions")
    p.add_argument("--steps", type=int, default=3, help="training steps per repetition (distinct batches)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--against", choices=["trl"], default=None, help="also run TRL's CPOTrainer, interleaved")
    p.add_argument("--no-shared-prompt", dest="shared_prompt", action="store_false",
                   help="concatenated forward instead of the prompt KV cache")
    p.add_argument("--kv-cache", dest="packed", action="store_false",
                   help="share the prompt through the KV cache instead of the packed forward "
                        "(the module's default, forward=packed)")
    p.add_argument("--no-fused-adamw", dest="fused_adamw", action="store_false",
                   help="for-loop AdamW instead of the fused one (TRL's default), for every implementation")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="on both sides (TRL's CPOConfig defaults to it; ours does not)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="pad the model's vocabulary to this size (e.g. 32000, LLaMA-2's)")
    p.add_argument("--levers", action="store_true", help="also measure each lever on/off for CPO")
    p.add_argument("--memory", choices=["subprocess", "off"], default="subprocess", help="peak-RSS probes (CPU)")
    p.add_argument("--memory-parallel", type=int, default=2,
                   help="memory probes at once (1 for large vocabularies: TRL's full logits take gigabytes)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--loss", nargs="+", default=list(LOSSES), choices=LOSSES,
                   help="our implementations to run, by loss")
    p.add_argument("--forward", nargs="+", default=[], choices=FORWARDS, help="also CPO with each of these forwards")
    p.add_argument("--chunk-tokens", nargs="+", default=[], type=_chunk_tokens, metavar="N|null|auto",
                   help="also CPO with each logps.chunk_tokens (null: full logits; cpo itself runs the default, auto)")
    p.add_argument("--lora-r", type=int, default=None,
                   help="LoRA of this rank on a frozen base shared by every implementation")
    p.add_argument("--lora-targets", nargs="+", default=["down_proj"], help="LoRA target projections")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: bf16 weights, bf16 autocast")
    p.add_argument("--lengths", choices=LENGTHS, default="demo",
                   help="demo sentences, ALMA-R's token lengths, or every pair at its bounds (256 prompt, 512 total)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("generation (--generation runs only this)")
    g.add_argument("--generation", action="store_true",
                   help="batched vs one-at-a-time beam search (cpo.mt.generation.translate), and N sampled "
                        "candidates per source at N = --gen-n (cpo.mt.sampling): sentences/s and candidates/s")
    g.add_argument("--gen-n", type=int, nargs="+", default=[1, 4, 8], help="candidates per source")
    g.add_argument("--gen-sentences", type=int, default=64, help="sentences per batched repetition")
    g.add_argument("--gen-single", type=int, default=8, help="sentences per one-at-a-time repetition")
    g.add_argument("--gen-batch-size", type=int, nargs="+", default=[16, 64],
                   help="batch sizes (translate's default is 16)")
    g.add_argument("--num-beams", type=int, default=5)
    g.add_argument("--max-new-tokens", type=int, default=24)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    import torch

    from cpo.bench import BenchArgs, run_candidates_bench, run_generation_bench, run_train_bench

    ns = parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if ns.device == "auto" else ns.device
    if ns.generation:
        summary = run_generation_bench(ns.model, ns.threads, ns.gen_sentences, ns.gen_single, ns.gen_batch_size,
                                       ns.num_beams, ns.max_new_tokens, reps=3 if ns.reps > 1 else 1, seed=ns.seed,
                                       device=device,
                                       dtype="bfloat16" if ns.precision == "bf16" else "float32", lengths=ns.lengths)
        summary["candidates"] = run_candidates_bench(
            ns.model, ns.threads, ns.gen_sentences // 2, ns.gen_n, ns.gen_batch_size[0], ns.max_new_tokens,
            reps=3 if ns.reps > 1 else 1, seed=ns.seed, device=device,
            dtype="bfloat16" if ns.precision == "bf16" else "float32", lengths=ns.lengths)
    else:
        args = BenchArgs(models=ns.model, batch_size=ns.batch_size, threads=ns.threads, reps=ns.reps, warmup=ns.warmup,
                         steps=ns.steps, lr=ns.lr, against=ns.against, shared_prompt=ns.shared_prompt,
                         fused_adamw=ns.fused_adamw,
                         levers=ns.levers, memory=ns.memory, device=device, seed=ns.seed,
                         vocab_size=ns.vocab_size, gradient_checkpointing=ns.gradient_checkpointing,
                         packed=ns.packed, losses=tuple(ns.loss), forwards=tuple(ns.forward), lora_r=ns.lora_r,
                         lora_targets=tuple(ns.lora_targets), precision=ns.precision, lengths=ns.lengths,
                         chunk_tokens=tuple(ns.chunk_tokens), memory_parallel=ns.memory_parallel)
        summary = run_train_bench(args)
    print(json.dumps(summary, default=str), flush=True)
    return summary


if __name__ == "__main__":
    main()
