"""Checkpoints: a model saved as a folder that any stage can read.

    save_checkpoint("runs/default/pretrain/checkpoint", model, tokenizer, train_state=..., optimizer=...)
    model, tokenizer, meta = load_checkpoint("runs/default/pretrain")

A checkpoint folder holds
    config.json          the model's GPTConfig plus metadata (stage, step, ...)
    model.safetensors    the weights (safetensors: plain tensors, no pickled code)
    tokenizer.tiktoken   the tokenizer's ranks, tokenizer.json its special tokens
    head.safetensors     a scalar head (reward or value, see heads.py) beside the GPT (optional)
    train_state.json     step and loss history, to resume training (optional)
    optimizer.pt         optimizer moments, loaded with weights_only=True (optional)

A checkpoint with a head still loads as a plain GPT (load_checkpoint); load_with_head() gives
the GPT and its head together. config.json's "head" entry names the head's kind and shape.

Writing is atomic: everything goes into a temporary folder that then replaces the old one,
so a run killed mid-save leaves the previous checkpoint intact, never half of a new one.
"""

import json
import os
import pickle
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt_scratch.heads import GPTWithHead
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.tokenizer import Tokenizer

HEAD_FILE = "head.safetensors"


def weights_to_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the tied lm_head copy (safetensors refuses shared tensors)."""
    state = model.state_dict()
    if getattr(model, "config", None) is not None and getattr(model.config, "tie_weights", False):
        state.pop("lm_head.weight", None)
    return {name: t.detach().cpu().contiguous() for name, t in state.items()}


def save_checkpoint(folder: str | Path, model: GPT | GPTWithHead, tokenizer: Tokenizer | None = None,
                    meta: dict | None = None, train_state: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Save everything needed to use (and, with train_state/optimizer, resume) a model.

    A GPTWithHead is saved as its GPT (model.safetensors) plus its head (head.safetensors).
    """
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # The files go into the temporary folder with plain writes: the folder swap below is the atomic step.
    config = {"model": model.config.to_dict(), "meta": meta or {}}
    gpt = model
    if isinstance(model, GPTWithHead):
        gpt = model.gpt
        config["head"] = {"kind": model.kind, "shape": list(model.head.weight.shape),
                          "with_logprob": model.head.logprob_weight is not None}
        save_file({n: t.detach().cpu().contiguous() for n, t in model.head.state_dict().items()}, str(tmp / HEAD_FILE))
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    save_file(weights_to_save(gpt), str(tmp / "model.safetensors"))
    if tokenizer is not None:
        tokenizer.save(tmp)
    if train_state is not None:
        (tmp / "train_state.json").write_text(json.dumps(train_state))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    # Swap: old checkpoint aside, new one in, then delete the old one.
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def find_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a stage folder holding checkpoint/; recover an interrupted swap."""
    path = Path(path)
    for candidate in (path, path / "checkpoint"):
        if (candidate / "config.json").is_file():
            return candidate
        old = candidate.with_name(candidate.name + ".old")
        if not candidate.exists() and (old / "config.json").is_file():
            return old  # a save was interrupted between its two renames: the old one is complete
    raise FileNotFoundError(f"no checkpoint in {path} (expected {path}/config.json or "
                            f"{path}/checkpoint/config.json); run the stage that writes it first")


def read_config(folder: Path) -> tuple[GPTConfig, dict]:
    try:
        data = json.loads((folder / "config.json").read_text())
        return GPTConfig.from_dict(data["model"]), data.get("meta", {})
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{folder}/config.json is not a valid gpt-scratch config ({err}); "
                         f"re-save the checkpoint") from None


def read_weights(folder: Path, file: str = "model.safetensors") -> dict[str, torch.Tensor]:
    path = folder / file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the checkpoint is incomplete, re-run its stage")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is corrupt or unreadable ({err}); re-run the stage that wrote it") from None


def load_weights_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path,
                      file: str = "model.safetensors") -> None:
    """Copy weights into the model, explaining any name or shape mismatch in one line."""
    own = model.state_dict()
    if getattr(getattr(model, "config", None), "tie_weights", False):
        own.pop("lm_head.weight", None)
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong_shape = [f"{n} {tuple(weights[n].shape)} vs {tuple(own[n].shape)}"
                   for n in own if n in weights and weights[n].shape != own[n].shape]
    if missing or unexpected or wrong_shape:
        raise ValueError(f"{source}/{file} does not match the model: "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}, shapes {wrong_shape[:3]}; "
                         f"restore the config.json that was saved with these weights or re-run the stage")
    model.load_state_dict(weights, strict=False)


def load_head_into(model: GPTWithHead, folder: Path) -> None:
    """The saved head into model.head; a missing head or one of another kind or shape is one line."""
    if not (folder / HEAD_FILE).is_file():
        raise ValueError(f"{folder} holds no scalar head ({HEAD_FILE}); give the folder of a stage that trains "
                         f"one (e.g. reward), not a plain GPT checkpoint")
    saved = json.loads((folder / "config.json").read_text()).get("head", {})
    if saved.get("kind", model.kind) != model.kind:
        raise ValueError(f"{folder} holds a {saved['kind']} head, but a {model.kind} head is needed here; "
                         f"give a checkpoint with a {model.kind} head")
    load_weights_into(model.head, read_weights(folder, HEAD_FILE), folder, HEAD_FILE)


def load_model_into(model: GPT | GPTWithHead, folder: Path) -> None:
    """Load a checkpoint folder's weights into an existing model (its head too, for a GPTWithHead)."""
    if isinstance(model, GPTWithHead):
        load_weights_into(model.gpt, read_weights(folder), folder)
        load_head_into(model, folder)
    else:
        load_weights_into(model, read_weights(folder), folder)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer | None, dict]:
    """Load (model, tokenizer or None, meta) from a checkpoint or stage folder."""
    folder = find_checkpoint(path)
    config, meta = read_config(folder)
    model = GPT(config)
    load_weights_into(model, read_weights(folder), folder)
    tokenizer = Tokenizer.load(folder) if (folder / "tokenizer.tiktoken").is_file() else None
    return model.to(device), tokenizer, meta


def load_stage_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer, dict]:
    """load_checkpoint for a stage that goes on training or answering: the tokenizer must be there."""
    model, tokenizer, meta = load_checkpoint(path, device)
    if tokenizer is None:
        raise FileNotFoundError(f"{path} has no tokenizer files; give the folder of a checkpoint written by a stage")
    return model, tokenizer, meta


def load_with_head(path: str | Path, kind: str = "reward",
                   device: str | torch.device = "cpu") -> tuple[GPTWithHead, Tokenizer | None, dict]:
    """Load (GPT with its scalar head, tokenizer or None, meta) from a checkpoint or stage folder."""
    gpt, tokenizer, meta = load_checkpoint(path, device="cpu")
    folder = find_checkpoint(path)
    saved = json.loads((folder / "config.json").read_text()).get("head", {})
    model = GPTWithHead(gpt, kind, with_logprob=saved.get("with_logprob", False))
    load_head_into(model, folder)
    return model.to(device), tokenizer, meta


def load_train_state(path: str | Path) -> tuple[dict, dict | None]:
    """(train_state, optimizer_state) saved for resuming, or ({}, None) if there are none."""
    folder = find_checkpoint(path)
    state_file, optim_file = folder / "train_state.json", folder / "optimizer.pt"
    try:
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        optim = torch.load(optim_file, weights_only=True) if optim_file.is_file() else None
    except (json.JSONDecodeError, pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(f"the resume state in {folder} is damaged ({type(err).__name__}); delete {folder} "
                         f"to train the stage from the start") from None
    return state, optim
