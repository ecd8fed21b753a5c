"""Training checkpoints with PyTorch's distributed checkpointing (``torch.distributed.checkpoint``).

A checkpoint is a folder ``OUT/checkpoints/step-NNNNNNNN/`` holding

* the DCP files (``.metadata`` and one ``__R_0.distcp`` per process): tensors only —
  the trained parameters (``model.*``), the AdamW state (``optim.*``), the EMA
  (``ema.*``) and the RNG state (``rng.*``). With FSDP each process writes its own
  shards, with DDP the replicated tensors are written once; either run resumes on any
  number of processes, with DDP or FSDP (DCP reshards on load);
* ``state.json``: the step (hence the data position), the run's settings, the
  scheduler, the optimiser's hyper-parameters and the trained parameters' names.

Values that are not tensors stay out of the DCP files (DCP would pickle them), so
reading a checkpoint never unpickles anything. The parameters and the optimiser
state go through ``get_state_dict`` / ``set_state_dict``
(``torch.distributed.checkpoint.state_dict``), which name AdamW's state by parameter
and gather nothing. A single process saves and loads the same way (no process group).

Each checkpoint is written to ``.tmp-step-N`` and renamed once every process has
finished, so a killed run never leaves a partial checkpoint under a final name;
``--resume auto`` takes the newest complete one.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

FORMAT = "dream_engine.train_checkpoint.dcp"
STATE_FILE = "state.json"
_NAME = re.compile(r"step-(\d{8})")
# only the trained parameters (the frozen LMM / DiT weights are the input files)
_OPTIONS = StateDictOptions(ignore_frozen_params=True, strict=False)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier():
    if _distributed():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, STATE_FILE)) and os.path.isfile(os.path.join(path, ".metadata"))


def list_checkpoints(folder: str) -> list[str]:
    """The complete checkpoints in ``folder``, oldest first."""
    if not os.path.isdir(folder):
        return []
    names = sorted(n for n in os.listdir(folder) if _NAME.fullmatch(n))
    return [os.path.join(folder, n) for n in names if is_checkpoint(os.path.join(folder, n))]


def find_resume(folder: str, resume: str | None) -> str | None:
    """The checkpoint to resume: ``"auto"`` → the newest complete one in ``folder`` (None
    when there is none); a path → that checkpoint."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(folder)
        return found[-1] if found else None
    read_state(resume)  # a clear error before any model is loaded
    return resume


def read_state(path: str) -> dict:
    """The ``state.json`` of a checkpoint folder (raises a ValueError naming the problem)."""
    if not is_checkpoint(path):
        raise ValueError(f"{path} is not a Dream Engine training checkpoint: expected a folder "
                         f"OUT/checkpoints/step-NNNNNNNN/ with {STATE_FILE} and DCP files (.metadata, *.distcp)")
    with open(os.path.join(path, STATE_FILE)) as f:
        state = json.load(f)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a Dream Engine training checkpoint (format {state.get('format')!r})")
    return state


def _rng() -> dict:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _tensors(module, opt, names: list[str], ema: list | None) -> tuple[dict, list]:
    """The DCP state dict (tensors only, nested) and the optimiser's param groups."""
    model_sd, optim_sd = get_state_dict(module, opt, options=_OPTIONS)
    tensors = {"model": {n: model_sd[n] for n in names}, "optim": optim_sd["state"], "rng": _rng()}
    if ema is not None:
        tensors["ema"] = dict(zip(names, ema))
    return tensors, optim_sd["param_groups"]


def save(folder: str, step: int, module, opt, sched, names: list[str], ema: list | None, config: dict,
         keep: int = 0) -> str:
    """Write checkpoint ``step`` (every process calls this); keep the newest ``keep`` (0: all)."""
    final = os.path.join(folder, f"step-{step:08d}")
    tmp = os.path.join(folder, f".tmp-step-{step:08d}")
    if _rank() == 0:
        os.makedirs(folder, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    _barrier()
    tensors, groups = _tensors(module, opt, names, ema)
    dcp.save(tensors, checkpoint_id=tmp)
    if _rank() == 0:
        sd = sched.state_dict()
        state = {"format": FORMAT, "step": step, "config": config, "param_names": list(names),
                 "ema": ema is not None, "scheduler": {k: v for k, v in sd.items() if k != "lr_lambdas"},
                 "optim_groups": [{k: v for k, v in g.items() if k != "params"} for g in groups]}
        with open(os.path.join(tmp, STATE_FILE), "w") as f:
            json.dump(state, f, indent=1)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        done = list_checkpoints(folder)
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    _barrier()
    return final


def load(path: str, module, opt, sched, names: list[str], ema: list | None) -> dict:
    """Restore parameters, optimiser, scheduler, EMA and RNG from ``path`` (every process
    calls this, after FSDP sharding and before the DDP wrap); returns ``state.json``."""
    state = read_state(path)
    if state["param_names"] != list(names):
        raise ValueError(f"checkpoint {path} trains other parameters than this run "
                         f"(different stage, LoRA targets or --train-dit?)")
    tensors, groups = _tensors(module, opt, names, ema if state["ema"] else None)
    dcp.load(tensors, checkpoint_id=path)
    groups = [{**g, "params": cur["params"]} for g, cur in zip(state["optim_groups"], groups)]
    set_state_dict(module, opt, model_state_dict=tensors["model"],
                   optim_state_dict={"state": tensors["optim"], "param_groups": groups}, options=_OPTIONS)
    if ema is not None and not state["ema"]:  # the run before had no EMA: start it from the weights
        with torch.no_grad():
            for e, p in zip(ema, tensors["model"].values()):
                e.copy_(p.float())
    sd = sched.state_dict()
    sd.update(state["scheduler"])
    sched.load_state_dict(sd)
    torch.set_rng_state(tensors["rng"]["torch"])
    if "cuda" in tensors["rng"]:
        torch.cuda.set_rng_state(tensors["rng"]["cuda"])
    return state


def read_params(path: str, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """``(params, state)`` of a checkpoint as plain full tensors, in one process (FSDP
    shards are joined): the EMA weights when the run kept them and ``use_ema``."""
    state = read_state(path)
    prefix = "ema." if use_ema and state["ema"] else "model."
    md = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    template = {}
    for n in state["param_names"]:
        m = md.get(prefix + n)
        if not isinstance(m, TensorStorageMetadata):
            raise ValueError(f"checkpoint {path} lacks the tensor {prefix + n}")
        template[prefix + n] = torch.empty(m.size, dtype=m.properties.dtype)
    dcp.load(template, checkpoint_id=path, no_dist=True)
    return {k[len(prefix):]: v for k, v in template.items()}, state
