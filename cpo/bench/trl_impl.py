"""TRL's CPOTrainer on the same weights, pairs, batches and optimizer as ours, timed from its own callbacks."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Callable

import torch

from cpo.bench.flops import sync, trl_work
from cpo.bench.ours import OursImpl, autocast_context
from cpo.bench.policies import make_optimizer
from cpo.bench.workload import ModelSpec, Workload
from cpo.data import format_prompt


def trl_available() -> bool:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        import trl.experimental.cpo  # noqa: F401
    except Exception:
        return False
    return True


class TrlImpl:
    """TRL's CPOTrainer on the same weights, pairs (same prompt and completion strings), batches and optimizer."""

    name = "trl_cpo"

    def __init__(
        self,
        policies,
        wl: Workload,
        spec: ModelSpec,
        lr: float,
        device: str,
        fused: bool,
        threads: int,
        total_steps: int,
        gradient_checkpointing: bool = False,
        precision: str = "fp32",
    ):
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        import datasets
        from torch.utils.data import SequentialSampler
        from transformers.utils import logging as hf_logging
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        hf_logging.set_verbosity_error()
        datasets.disable_progress_bar()

        class SequentialCPOTrainer(CPOTrainer):
            # Same batches as ours, in the same order (TRL would shuffle).
            def _get_train_sampler(self, train_dataset=None):
                return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        self.device, self.precision, self.policies = device, precision, policies
        # The Trainer turns checkpointing on only inside train(); on now, for the first-batch checks too.
        # (A shared LoRA base has it on already, or off, for every implementation alike.)
        self.model, params = policies.get(self.name, gradient_checkpointing)
        self.activate()
        n = wl.batch_size * wl.steps
        # Our completion is the continuation of the prompt after one space (cpo.data.PairEncoder); TRL
        # tokenizes prompt+answer as given, adds BOS to the prompt and EOS to the answer.
        data = {
            "prompt": [format_prompt(e.source, e.src_lang, e.tgt_lang) for e in wl.examples[:n]],
            "chosen": [" " + e.chosen for e in wl.examples[:n]],
            "rejected": [" " + e.rejected for e in wl.examples[:n]],
        }
        self.tmp = tempfile.TemporaryDirectory(prefix="cpo-bench-trl-")
        args = CPOConfig(
            output_dir=self.tmp.name,
            per_device_train_batch_size=wl.batch_size,
            learning_rate=lr,
            max_steps=total_steps,
            beta=0.1,
            cpo_alpha=1.0,
            loss_type="sigmoid",
            max_length=512,
            max_grad_norm=1.0,
            weight_decay=0.0,
            report_to="none",
            logging_strategy="no",
            save_strategy="no",
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            remove_unused_columns=False,
            use_cpu=not device.startswith("cuda"),
            seed=0,
            bf16=precision == "bf16",
            fp16=False,
            gradient_accumulation_steps=1,
            # TRL's own default is True; ours is False: the same on both sides.
            gradient_checkpointing=gradient_checkpointing,
        )
        self.opt, self.sched = make_optimizer(params, lr, fused)
        self.trainer = SequentialCPOTrainer(
            model=self.model,
            args=args,
            train_dataset=datasets.Dataset.from_dict(data),
            processing_class=wl.tok,
            optimizers=(self.opt, self.sched),
        )
        torch.set_num_threads(threads)  # in case anything in the Trainer's set-up changed it
        self.batches = list(self.trainer.get_train_dataloader())
        self.work = [trl_work(spec, self.model.config.vocab_size, b, policies.lora) for b in self.batches]
        self.train_rows = self.trainer.train_dataset

    def activate(self) -> None:
        self.policies.activate(self.name)

    def token_check(self, wl: Workload) -> dict:
        """Do TRL's token ids equal ours (prompt with BOS + completion with EOS) for every pair?"""
        same, n = 0, len(self.train_rows)
        for i in range(n):
            row, p = self.train_rows[i], wl.pairs[i]
            ok = (
                row["chosen_input_ids"] == p.prompt_ids + p.chosen_ids
                and row["rejected_input_ids"] == p.prompt_ids + p.rejected_ids
                and sum(x != -100 for x in row["chosen_labels"]) == len(p.chosen_ids)
                and sum(x != -100 for x in row["rejected_labels"]) == len(p.rejected_ids)
            )
            same += ok
        return {"pairs": n, "identical_ids": same}

    def first_batch_loss(self) -> torch.Tensor:
        """TRL's training loss on the first batch, with its graph (for the activation-memory count)."""
        self.activate()
        with autocast_context(self.device, self.precision):
            loss = self.trainer.compute_loss(self.trainer.model, self.trainer._prepare_inputs(self.batches[0]))
        self.trainer._stored_metrics.clear()
        return loss

    @torch.no_grad()
    def first_batch(self) -> dict:
        self.activate()
        b = self.trainer._prepare_inputs(self.batches[0])
        with autocast_context(self.device, self.precision):
            loss, metrics = self.trainer.get_batch_loss_metrics(self.trainer.model, b, train_eval="train")
            c, r = self.trainer.concatenated_forward(self.trainer.model, b)[:2]
        self.trainer._stored_metrics.clear()
        return {"loss": float(loss), "chosen": c.float().cpu(), "rejected": r.float().cpu(), "nll": metrics["nll_loss"]}

    def train(
        self,
        on_chunk: Callable[[list[float]], None],
        steps: int,
        on_step_begin: Callable[[], None] | None = None,
        on_step_end: Callable[[], None] | None = None,
    ) -> None:
        """Runs trainer.train(); after every ``steps`` steps calls ``on_chunk(step_times)`` (outside the timed
        region; whatever it runs, TRL's adapter is active again when TRL goes on)."""
        from transformers import TrainerCallback

        device, impl = self.device, self

        class Timer(TrainerCallback):
            def __init__(self):
                self.t0, self.times = 0.0, []

            def on_step_begin(self, args, state, control, **kw):
                if on_step_begin is not None:
                    on_step_begin()
                sync(device)
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                sync(device)
                self.times.append(time.perf_counter() - self.t0)
                if on_step_end is not None:
                    on_step_end()
                if len(self.times) == steps:
                    times, self.times = self.times, []
                    on_chunk(times)
                    impl.activate()

        from transformers.trainer_callback import PrinterCallback

        self.trainer.remove_callback(PrinterCallback)  # it prints the end-of-training metrics dict
        self.trainer.add_callback(Timer())
        self.activate()
        self.trainer.train()


def compare_first_batch(ours: OursImpl, trl: TrlImpl, got: dict) -> dict:
    """Loss and per-sequence log-probs of both implementations on the first batch, same initial weights; ours
    with its own log-prob setting (``logps.chunk_tokens``: chunked or full logits). ``got``: TRL's
    ``first_batch()``, computed once for every implementation compared."""
    from cpo.train.logprobs import completion_logps

    b = ours.batches[0]
    ours.activate()
    policy = ours.module.policy
    with torch.no_grad(), ours.autocast():
        loss = float(ours.compute(b, train=False))
        c, r = completion_logps(
            policy,
            b["prompt_ids"],
            b["prompt_mask"],
            [(b["chosen_ids"], b["chosen_mask"]), (b["rejected_ids"], b["rejected_mask"])],
            ours.module.pad_id,
            ours.module.logps.chunk_for(policy),
        )
    return {
        "chunk_tokens": ours.module.logps.chunk_for(policy),
        "ours_loss": loss,
        "trl_loss": got["loss"],
        "loss_abs_diff": abs(loss - got["loss"]),
        "logps_max_abs_diff": float(
            max((c.sum.float().cpu() - got["chosen"]).abs().max(), (r.sum.float().cpu() - got["rejected"]).abs().max())
        ),
        "logps_scale": float(torch.cat([got["chosen"], got["rejected"]]).abs().max()),
    }
