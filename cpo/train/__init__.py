"""One training run, the Lightning side: the LightningModule and its losses and log-probs, the policy and the
DPO reference, the reference cache, the Trainer and strategies, guards, callbacks, loggers, provenance, the
config checks (the keys each group accepts, read from the code; TRL's option names), what a run settles before
it loads anything (model.dtype=auto, the machine, the hub), SIGTERM at any moment, the held-out evaluation,
and the run itself (``cpo.train.run``, the composition root)."""
