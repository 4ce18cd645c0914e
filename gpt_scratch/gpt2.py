"""Hugging Face GPT-2 checkpoints in and out of our GPT.

    from gpt_scratch.generate import generate_text
    from gpt_scratch.gpt2 import download_gpt2, load_hf_gpt2, save_hf_gpt2
    from gpt_scratch.tokenizer import gpt2_tokenizer

    folder = download_gpt2("gpt2")           # once, needs internet (gpt2-medium, -large, -xl too)
    model = load_hf_gpt2(folder)             # any folder with config.json + model.safetensors
    print(generate_text(model, gpt2_tokenizer(), ["Hello, I'm a language model,"], 30))
    save_hf_gpt2(model, "my-gpt2", eos_id=50256)  # GPT2LMHeadModel.from_pretrained("my-gpt2") reads it

    python -m gpt_scratch import-gpt2 --hf gpt2 --out runs/gpt2/base   # a checkpoint every stage reads
    python -m gpt_scratch sft --base runs/gpt2/base --data alpaca.json --template alpaca --preset gpt2

Our parameters carry GPT-2's own names (transformer.h.0.attn.c_attn.weight, ...), so importing
is mostly copying by name. The one twist: GPT-2 was written with "Conv1D" layers, which are
linear layers that store their weight as (in, out); nn.Linear stores (out, in). So c_attn,
c_proj and c_fc weights are transposed on the way in and again on the way out.
"""

import argparse
import json
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gpt_scratch.checkpoint import save_checkpoint
from gpt_scratch.files import atomic_path, write_atomic
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.settings import add_flags, from_flags, setting
from gpt_scratch.tokenizer import GPT2Vocabulary, Tokenizer, gpt2_tokenizer

GPT2_SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # 124M, 355M, 774M, 1.5B parameters
CONV1D_WEIGHTS = ("c_attn.weight", "c_proj.weight", "c_fc.weight")  # stored (in, out) by GPT-2
BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers some checkpoints hold: not weights


def read_hf_config(folder: Path, attention: str) -> GPTConfig:
    """GPT-2's config.json -> our GPTConfig."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; give a folder holding a GPT-2 config.json and model.safetensors")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-download or re-save it") from None
    hf.setdefault("n_positions", hf.get("n_ctx"))  # old GPT-2 configs call the context n_ctx
    absent = [key for key in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd") if hf.get(key) is None]
    if absent:
        raise ValueError(f"{path} lacks {absent}; is it a GPT-2 config?")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        raise ValueError(f"{path}: n_inner={hf['n_inner']} is not supported; our MLP is 4 * n_embd wide")
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"{path}: activation_function {hf['activation_function']!r} is not supported; "
                         f"our MLP uses GPT-2's tanh GELU (gelu_new)")
    return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"],
                     n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                     tie_weights=hf.get("tie_word_embeddings", True), attention=attention,
                     layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5))


def hf_to_ours(hf_weights: dict[str, torch.Tensor], tie_weights: bool) -> dict[str, torch.Tensor]:
    """Rename (GPT2Model saves "h.0...", GPT2LMHeadModel "transformer.h.0...") and transpose."""
    ours = {}
    for name, tensor in hf_weights.items():
        if name.endswith(BUFFERS) or (tie_weights and name == "lm_head.weight"):
            continue  # a tied lm_head is wte itself: nothing of its own to load
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name
        ours[name] = tensor.t() if name.endswith(CONV1D_WEIGHTS) else tensor
    return ours


def load_hf_gpt2(folder: str | Path, attention: str = "manual") -> GPT:
    """Build our GPT from a Hugging Face GPT-2 folder (config.json + model.safetensors)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; download one with download_gpt2() first")
    config = read_hf_config(folder, attention)
    path = folder / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; re-save the model with save_pretrained(safe_serialization=True)")
    weights = hf_to_ours(load_file(str(path)), config.tie_weights)

    model = GPT(config)
    own = model.state_dict()
    if config.tie_weights:
        own.pop("lm_head.weight")  # filled through wte
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    wrong_shape = [f"{n} {tuple(weights[n].shape)} (ours {tuple(own[n].shape)})"
                   for n in own if n in weights and weights[n].shape != own[n].shape]
    if missing or unexpected or wrong_shape:
        raise ValueError(f"{path} does not fit {folder}/config.json: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {wrong_shape[:5]}")
    model.load_state_dict(weights, strict=False)  # strict=False only for the tied lm_head
    return model.eval()


def hf_config(config: GPTConfig, eos_id: int | None) -> dict:
    """Our GPTConfig -> the config.json that transformers' GPT2LMHeadModel expects."""
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_ctx": config.block_size,
        "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": config.layer_norm_eps,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "initializer_range": 0.02, "tie_word_embeddings": config.tie_weights, "torch_dtype": "float32",
        "bos_token_id": eos_id, "eos_token_id": eos_id,  # GPT-2 uses <|endoftext|> for both
    }


def save_hf_gpt2(model: GPT, folder: str | Path, eos_id: int | None = None) -> Path:
    """Write folder/config.json and folder/model.safetensors in Hugging Face's GPT-2 layout.

    eos_id: the tokenizer's <|endoftext|> id (50256 for GPT-2's), so that transformers'
    generate() knows where to stop; None if the model has no such token.
    """
    c = model.config
    if not c.bias:
        raise ValueError("GPT-2 has biases everywhere; a model built with bias=False cannot be saved as GPT-2")
    if (c.norm, c.position, c.mlp, c.kv_heads, c.mlp_width) != ("layernorm", "learned", "gelu", c.n_head, 4 * c.n_embd):
        raise ValueError("this model has a modern layout (RMSNorm, RoPE, SwiGLU or grouped-query attention), "
                         "which GPT-2 has not; save it as a Llama with gpt_scratch.llama.save_hf_llama")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in model.state_dict().items():
        if model.config.tie_weights and name == "lm_head.weight":
            continue  # safetensors refuses two names for one tensor; transformers re-ties it
        tensor = tensor.t() if name.endswith(CONV1D_WEIGHTS) else tensor
        tensors[name] = tensor.detach().float().cpu().contiguous()
    # Atomic writes (files.py): a crash never leaves half a file behind.
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})  # transformers refuses files without "format"
    write_atomic(folder / "config.json", json.dumps(hf_config(model.config, eos_id), indent=2) + "\n")
    return folder


def import_gpt2(hf: str | Path, out: str | Path, tokenizer: Tokenizer) -> Path:
    """A Hugging Face GPT-2 -> out/checkpoint, a course checkpoint with GPT-2's tokenizer beside it.

    hf is a folder (config.json + model.safetensors) or a size name of GPT2_SIZES, downloaded
    once. Every stage then reads it as it reads a pretrained one: sft --base out. GPT-2's
    tokenizer has no chat tokens, so fine-tune it with the alpaca template.
    """
    folder = download_gpt2(str(hf)) if str(hf) in GPT2_SIZES and not Path(hf).is_dir() else Path(hf)
    model = load_hf_gpt2(folder)
    if model.config.vocab_size < tokenizer.n_vocab:
        raise ValueError(f"{folder} has {model.config.vocab_size} token embeddings, but the tokenizer has "
                         f"{tokenizer.n_vocab} tokens; give a GPT-2 with GPT-2's vocabulary")
    return save_checkpoint(Path(out) / "checkpoint", model, tokenizer, {"stage": "import-gpt2", "source": str(hf)})


def download_gpt2(size: str = "gpt2", cache_dir: str | Path = "~/.cache/gpt_scratch") -> Path:
    """Fetch config.json and model.safetensors of an OpenAI GPT-2 from the Hugging Face hub.

    Files already in cache_dir/size are kept. Returns the folder, ready for load_hf_gpt2().
    """
    if size not in GPT2_SIZES:
        raise ValueError(f"unknown GPT-2 size {size!r}; choose one of {', '.join(GPT2_SIZES)}")
    folder = Path(cache_dir).expanduser() / size
    folder.mkdir(parents=True, exist_ok=True)
    for filename in ("config.json", "model.safetensors"):
        target = folder / filename
        if target.is_file():
            continue
        url = f"https://huggingface.co/{size}/resolve/main/{filename}"
        try:  # atomically (files.py): a broken download leaves no half file that would pass as complete
            with (atomic_path(target) as tmp, urllib.request.urlopen(url, timeout=60) as response,
                  open(tmp, "wb") as out):
                megabytes = int(response.headers.get("Content-Length", 0)) / 1e6
                print(f"downloading {url} ({megabytes:.0f} MB)")
                shutil.copyfileobj(response, out, length=1 << 20)
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise RuntimeError(f"could not download {url} ({reason}); check the internet connection, "
                               f"or put config.json and model.safetensors into {folder} by hand") from None
    return folder


# The command: python -m gpt_scratch import-gpt2 ------------------------------------------------------------

@dataclass
class ImportOptions:
    hf: str = setting(None, "a folder with config.json + model.safetensors, or gpt2, gpt2-medium, gpt2-large, gpt2-xl "
                            "(downloaded once)", preset=False, required=True)
    out: str = setting("runs/gpt2/base", "stage folder; the checkpoint goes into its checkpoint/", preset=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ImportOptions)
    add_flags(parser, GPT2Vocabulary)


def run(args: argparse.Namespace) -> int:
    options = from_flags(ImportOptions, args)
    folder = import_gpt2(options.hf, options.out, gpt2_tokenizer(args.gpt2_vocab))
    print(f"imported {options.hf} into {folder}; fine-tune it with: python -m gpt_scratch sft --base {options.out} "
          f"--data FILE --template alpaca")
    return 0
