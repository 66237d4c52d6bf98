"""Self-improving rounds as one command (``scripts/rounds.py``; SPEC section 9): per round, sample candidates
from the current policy, score them, build pairs, train from the current policy, evaluate.

- ``sources``: the rounds' training and validation sources (one or more directions) and each round's slice;
- ``stages``: a stage folder with its fingerprint: reused only when its settings and inputs are unchanged,
  refused naming the keys when they changed, started over when it was interrupted;
- ``candidates``: the candidates stage (``cpo.mt.sampling``), one multi-candidate JSONL per split and direction;
- ``pairs``: the pairs stage (``cpo.pairs``: the rule over all candidates, the scorer cache shared by rounds);
- ``training``: the train stage, an ordinary ``train.py`` run folder (``cpo.train.run``) that compare reads;
- ``tracking``: W&B, one group per rounds run, a job type per stage, the round in every run's config;
- ``run``: the whole rounds run, its identity, resume and summary.

The layer sits above ``train`` (it runs trainings) and below the apps; the demo provides its inputs through
``conf/inputs/demo.yaml`` (``_target_``), never by import.
"""
