"""Translation text: prompt formats, generation and its output cleaning, corpus evaluation (sacrebleu and the
scorers), health checks, and the readers of parallel data and system outputs. Knows nothing of training."""
