"""Safe defaults and honest messages before a run loads anything: model.dtype=auto, the machine's strategy, the hub
(issue 20 item 3)."""
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, SMALL_DEMO, compose
from cpo.errors import ConfigError
from cpo.train.preflight import check_hardware, resolve_model_dtype

HF = ["model=hf", "model.name_or_path=some/model"]
LORA = ["++model.lora.r=8", "++model.lora.target_modules=[q_proj,v_proj]"]


# ----------------------------------------------------------------------------------------- model.dtype
@pytest.mark.parametrize("extra, dtype", [
    ([], "float32"),                                      # full fine-tuning: float32 weights, whatever the precision
    (["trainer.precision=bf16-mixed"], "float32"),        # autocast computes in bf16; the weights stay float32
    (LORA, "bfloat16"),                                   # a frozen bf16 base; peft keeps the adapter in float32
    (LORA + ["strategy=fsdp"], "float32"),                # FSDP keeps the adapter in the base's dtype
    (["strategy=deepspeed_zero2"], "bfloat16"),           # DeepSpeed keeps fp32 master weights
])
def test_auto_dtype_trains_float32_weights(extra, dtype):
    cfg = compose(HF + extra)
    assert cfg.model.dtype == "auto"
    assert resolve_model_dtype(cfg) == dtype and cfg.model.dtype == dtype  # recorded as what was loaded


def test_explicit_bf16_full_fine_tuning_is_warned_and_the_alma_presets_keep_bf16(capsys):
    resolve_model_dtype(compose(HF + ["model.dtype=bfloat16"]))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: model.dtype=bfloat16 with trainer.precision=32-true "
                                                   "updates the trained weights in bf16 without fp32 master weights")
    for preset in ("alma-13b-lora", "alma-7b-lora"):  # SPEC section 5: bf16 + LoRA, as before
        cfg = compose([f"model={preset}", "data=alma_r_preference", "strategy=deepspeed_zero2"])
        assert resolve_model_dtype(cfg) == "bfloat16" == cfg.model.dtype
        cfg = compose([f"model={preset}"])
        assert resolve_model_dtype(cfg) == "bfloat16"
    assert capsys.readouterr().err == ""


def test_old_records_match_where_the_behaviour_is_the_same():
    """A LoRA run of model=hf recorded with the old default (bfloat16) is the same run under auto; a full
    fine-tuning one, which trained bf16 weights, is another run (it now trains float32 weights)."""
    from omegaconf import OmegaConf

    from cpo.runs.fingerprint import fingerprint

    def fp(cfg):
        return fingerprint(OmegaConf.to_container(cfg, resolve=True))

    for extra, same in ((LORA, True), ([], False)):
        old = compose(HF + extra + ["model.dtype=bfloat16"])  # what an older cpo recorded for model=hf
        new = compose(HF + extra)
        resolve_model_dtype(new)
        assert (fp(old) == fp(new)) is same


def test_full_fine_tuning_of_model_hf_saves_float32_weights(tmp_path):
    """model=hf used to load bfloat16 by default: a full fine-tune with trainer.precision=32-true trained bf16
    weights and saved them as bf16, silently."""
    from safetensors import safe_open

    from cpo.train.run import run

    demo = [a for a in SMALL_DEMO if not a.startswith("model.")] + [
        "+model.demo.warm_start_steps=30", "+model.demo.hidden_size=32"]  # the demo's small warm start, as model=hf
    res = run(compose(demo + ["model=hf", "model.name_or_path=demo", "logger=none", "evaluate.before_after=false",
                              "evaluate.during_training.enabled=false", "trainer.max_steps=2"]), tmp_path)
    assert res["config"]["model"]["dtype"] == "float32"
    with safe_open(str(tmp_path / "policy" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


# ----------------------------------------------------------------------------------------- the machine
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_a_gpu_strategy_on_a_cpu_machine_is_one_sentence():
    with pytest.raises(ConfigError, match=r"strategy=ddp needs a GPU \(trainer.accelerator=gpu; torch sees none "
                                          r"on this machine\): run it on a GPU machine, or choose strategy=auto"):
        check_hardware(compose(["strategy=ddp"]))
    check_hardware(compose(["strategy=ddp_cpu"]))
    check_hardware(compose([]))


def test_more_gpus_than_the_machine_has_and_a_missing_package(monkeypatch):
    import importlib.util

    from cpo.train import preflight

    monkeypatch.setattr(preflight, "_gpus_visible", lambda: 1)
    with pytest.raises(ConfigError, match=r"needs 4 GPUs \(trainer.devices=4; torch sees 1 on this machine\): give "
                                          r"trainer.devices=1 or fewer"):
        check_hardware(compose(["strategy=ddp", "trainer.devices=4"]))
    check_hardware(compose(["strategy=fsdp"]))  # devices=auto: whatever is there
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(ConfigError, match=r"strategy=deepspeed_zero3 needs the deepspeed package \(not installed\): "
                                          r"install it \(bash scripts/install.sh deepspeed, or pip install"):
        check_hardware(compose(["strategy=deepspeed_zero3"]))


# ----------------------------------------------------------------------------------------- the hub
def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_an_unreachable_hub_is_one_sentence_at_once(tmp_path):
    """train.py with a hub model and no hub: one sentence before the data loads, no minute of retries, no
    multi-line connection errors; HF_HUB_OFFLINE is respected without asking the network."""
    base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CPO_DEBUG")}
    base |= {"HF_HOME": str(tmp_path / "hf"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    envs = [base | {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}, base | {"HF_HUB_OFFLINE": "1"}]
    procs = [subprocess.Popen([sys.executable, "train.py", f"hydra.run.dir={tmp_path / str(i)}", "model=hf",
                               "model.name_or_path=org/absent-model"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i, env in enumerate(envs)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err), needle in zip(procs, outs, ("cannot be reached (", "HF_HUB_OFFLINE=1 is set")):
        errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert p.returncode == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
        assert errors[0].startswith("error: model.name_or_path='org/absent-model' is neither a local path nor in the "
                                    "local Hugging Face cache, and ") and needle in errors[0], errors[0]
        assert "hf download org/absent-model" in errors[0]
        # No retries (about 90 s of them) and no multi-line connection errors; refused before the data loads.
        assert "Retrying" not in err and "MaxRetryError" not in err and "[demo]" not in out


def test_the_hub_is_asked_once_and_briefly_and_a_cached_name_loads_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from cpo import hub
    from cpo.hub import hub_files_only, hub_problem
    from cpo.io import Unavailable

    silent = socket.socket()  # accepts connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setattr(hub, "HUB_PROBE_SECONDS", 0.5)
    monkeypatch.setattr(hub, "_hub_state", {})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    try:
        t0 = time.time()
        assert "cannot be reached (timed out" in hub_problem()
        assert hub_problem() and time.time() - t0 < 5  # asked once: the second answer is remembered
        snap = tmp_path / "models--org--cached" / "snapshots" / ("a" * 40)
        snap.mkdir(parents=True)
        (snap / "config.json").write_text("{}")
        (tmp_path / "models--org--cached" / "refs").mkdir()
        (tmp_path / "models--org--cached" / "refs" / "main").write_text("a" * 40)
        assert hub_files_only("model.name_or_path", "org/cached") is True  # load it from the cache, no retries
        with pytest.raises(Unavailable, match="set HF_ENDPOINT to a reachable mirror"):
            hub_files_only("model.name_or_path", "org/absent")
    finally:
        silent.close()
    monkeypatch.setattr(hub, "_hub_state", {"answer": None})  # reachable: the library downloads as it would
    assert hub_files_only("model.name_or_path", "org/absent") is False
