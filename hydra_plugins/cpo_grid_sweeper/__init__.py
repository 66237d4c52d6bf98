"""cpo's Hydra sweeper over a union of grids: ``hydra/sweeper=cpo_grid`` (grid.py: the job list;
grid_sweeper.py: the plugin). ``grid.varying_keys(HydraConfig.get())`` tells a job which keys vary
across its sweep.

Nothing is imported here: Hydra's plugin scan executes every module of this package again, and a
name re-exported here would then be a stale copy (e.g. an exception class that no longer matches).
"""
