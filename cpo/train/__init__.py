"""One training run, the Lightning side: the LightningModule and its losses and log-probs, the policy and the
DPO reference, the reference cache, the Trainer and strategies, guards, callbacks, loggers, provenance, the
config checks, the held-out evaluation, and the run itself (``cpo.train.run``, the composition root)."""
