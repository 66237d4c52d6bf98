"""Read an offline W&B run's record log (the .wandb file) without a server: history, config, run info."""
from __future__ import annotations

import json
from pathlib import Path


def read_offline_run(run_dir: str | Path) -> dict:
    """{'name', 'group', 'job_type', 'tags', 'config', 'history': [row dicts], 'summary'} of one offline run."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    files = list(Path(run_dir).glob("*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no .wandb file")
    ds = datastore.DataStore()
    ds.open_for_scan(str(files[0]))
    out: dict = {"history": [], "config": {}, "summary": {}, "complete": False}
    while True:
        data = ds.scan_data()
        if data is None:
            break
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            out["history"].append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
            )
        elif kind == "run":
            r = rec.run
            out.update(name=r.display_name, group=r.run_group, job_type=r.job_type, tags=list(r.tags))
            for item in r.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "exit":
            out["complete"] = True
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


def read_finished_run(run_dir: str | Path, timeout: float = 30.0) -> dict:
    """Like read_offline_run, waiting (bounded) for the writer to flush the run's exit record:
    W&B writes the record log asynchronously, and a loaded machine can lag behind wandb.finish()."""
    import time

    deadline = time.time() + timeout
    while True:
        run = read_offline_run(run_dir)
        if run["complete"] or time.time() > deadline:
            return run
        time.sleep(0.5)
