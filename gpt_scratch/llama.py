"""Hugging Face Llama-family checkpoints in and out of our GPT (chapter 12).

    model = load_hf_llama("smollm2")          # a folder with config.json + model.safetensors
    save_hf_llama(model, "my-llama")          # LlamaForCausalLM.from_pretrained("my-llama") reads it

    hf download HuggingFaceTB/SmolLM2-135M --local-dir smollm2     # once, needs internet
    python -m gpt_scratch import-llama --hf smollm2 --out runs/smollm2/base
    python -m gpt_scratch export-llama --checkpoint runs/smollm2/base --out smollm2-again

A transformers LlamaForCausalLM is our GPT with every chapter-12 switch on (llama_config):
RMSNorm, rotary positions, SwiGLU, grouped-query attention, and biases and a tied head as its
config says. Importing renames the tensors and joins three of them:
    model.embed_tokens                     -> transformer.wte
    model.layers.i.input_layernorm         -> transformer.h.i.ln_1
    self_attn.q_proj, k_proj, v_proj       -> transformer.h.i.attn.c_attn  (stacked: q rows, k rows, v rows)
    self_attn.o_proj                       -> transformer.h.i.attn.c_proj
    model.layers.i.post_attention_layernorm -> transformer.h.i.ln_2
    mlp.gate_proj, up_proj, down_proj      -> transformer.h.i.mlp.c_gate, c_fc, c_proj
    model.norm, lm_head                    -> transformer.ln_f, lm_head
Exporting does the reverse. Both use nn.Linear's (out, in) layout: no transposes, unlike GPT-2.

RoPE's convention. The course turns pairs (i, i + head_dim/2), "rotate_half", exactly as
transformers' Llama does (see model.py). Meta's original Llama weights were written for pairs of
neighbours (2i, 2i + 1); transformers' conversion script permuted the rows of q_proj and k_proj
once so that rotate_half gives the same attention. A transformers folder is therefore already in
our convention, and q and k are copied as they are, in both directions. (Meta's own
consolidated.00.pth files are not read here; convert them with transformers first.)

The tokenizer. A Llama-family folder carries a Hugging Face tokenizer (tokenizer.json, often a
SentencePiece tokenizer.model), which the course's Tokenizer (tiktoken-style byte-level BPE) does
not read. So the imported checkpoint has no course tokenizer: it gives logits for token ids
(encode text with transformers' AutoTokenizer), and the stages that need text (generate, sft, ...)
refuse it with one line. The tokenizer files are kept beside the checkpoint, in DIR/hf_tokenizer,
and export-llama writes them back, so the exported folder is complete again.

Settings the course does not have are refused with one line, never silently dropped: RoPE
scaling (Llama 3.1 and later's "llama3" rope type), a head_dim other than hidden_size / heads,
biases in only some of the layers, an activation other than SiLU.
"""

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt_scratch.args import int_range
from gpt_scratch.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from gpt_scratch.files import atomic_path, write_atomic
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.settings import add_flags, from_flags, setting

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json")  # copied aside on import, written back on export
TOKENIZER_FOLDER = "hf_tokenizer"
LINEARS = {"attn.c_proj": "self_attn.o_proj", "mlp.c_gate": "mlp.gate_proj", "mlp.c_fc": "mlp.up_proj",
           "mlp.c_proj": "mlp.down_proj"}  # ours -> transformers', inside a block


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; give a folder holding a Llama {what}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-download or re-save it") from None


def rope_theta_of(hf: dict, path: Path) -> float:
    """RoPE's base from a config.json: "rope_parameters" (transformers 5) or "rope_theta" (before)."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"{path}: RoPE scaling {rope.get('rope_type', rope.get('type'))!r} is not supported; "
                         f"the course's RoPE is the plain one (rope_type 'default')")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def read_llama_config(folder: Path, attention: str = "manual", block_size: int | None = None) -> GPTConfig:
    """A transformers Llama config.json -> our GPTConfig (every chapter-12 switch on)."""
    path = folder / "config.json"
    hf = read_json(path, "config.json and model.safetensors")
    if hf.get("model_type", "llama") != "llama":
        raise ValueError(f"{path} is a {hf['model_type']!r} model, not a Llama; "
                         f"{'use import-gpt2' if hf['model_type'] == 'gpt2' else 'give a LlamaForCausalLM folder'}")
    absent = [key for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                              "intermediate_size") if hf.get(key) is None]
    if absent:
        raise ValueError(f"{path} lacks {absent}; is it a Llama config?")
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, n_embd // n_head) or n_embd % n_head:
        raise ValueError(f"{path}: head_dim {hf.get('head_dim')} is not hidden_size / num_attention_heads "
                         f"({n_embd} / {n_head}); the course's heads split n_embd evenly")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: hidden_act {hf['hidden_act']!r} is not supported; SwiGLU's gate uses silu")
    bias = hf.get("attention_bias", False)
    if hf.get("mlp_bias", False) != bias:
        raise ValueError(f"{path}: attention_bias={bias} but mlp_bias={hf.get('mlp_bias')}; the course's bias "
                         f"setting covers every Linear layer at once")
    return GPTConfig(vocab_size=hf["vocab_size"], block_size=block_size or hf.get("max_position_embeddings", 2048),
                     n_layer=hf["num_hidden_layers"], n_head=n_head, n_embd=n_embd,
                     n_kv_head=hf.get("num_key_value_heads") or n_head, mlp_hidden=hf["intermediate_size"],
                     norm="rmsnorm", position="rope", mlp="swiglu", rope_theta=rope_theta_of(hf, path),
                     layer_norm_eps=hf.get("rms_norm_eps", 1e-6), bias=bias,
                     tie_weights=hf.get("tie_word_embeddings", False), attention=attention)


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or every shard that model.safetensors.index.json names (big models)."""
    index = folder / "model.safetensors.index.json"
    files = sorted(set(read_json(index, "index")["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    weights = {}
    for file in files:
        path = folder / file
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; re-save the model with "
                                    f"save_pretrained(safe_serialization=True)")
        try:
            weights.update(load_file(str(path)))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path} is corrupt or unreadable ({err}); download it again") from None
    return weights


def renamed_tensors(config: GPTConfig) -> list[tuple[str, str]]:
    """(our name, transformers' name) of every tensor that is only renamed: all but q, k and v."""
    parts = ("weight", "bias") if config.bias else ("weight",)
    pairs = [("transformer.wte.weight", "model.embed_tokens.weight"), ("transformer.ln_f.weight", "model.norm.weight")]
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        pairs += [(ours + "ln_1.weight", theirs + "input_layernorm.weight"),
                  (ours + "ln_2.weight", theirs + "post_attention_layernorm.weight")]
        pairs += [(f"{ours}{a}.{part}", f"{theirs}{b}.{part}") for a, b in LINEARS.items() for part in parts]
    if not config.tie_weights:
        pairs.append(("lm_head.weight", "lm_head.weight"))
    return pairs


def qkv_names(config: GPTConfig) -> list[tuple[str, list[str]]]:
    """(our c_attn tensor, transformers' q, k and v tensors) for every layer and part."""
    parts = ("weight", "bias") if config.bias else ("weight",)
    return [(f"transformer.h.{i}.attn.c_attn.{part}", [f"model.layers.{i}.self_attn.{x}_proj.{part}" for x in "qkv"])
            for i in range(config.n_layer) for part in parts]


def hf_to_ours(hf_weights: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """transformers' tensors -> ours, q, k and v stacked into c_attn; a missing or extra tensor is one line."""
    hf = {name if name.startswith(("model.", "lm_head.")) else "model." + name: t  # LlamaModel saves no "model."
          for name, t in hf_weights.items() if not name.endswith("rotary_emb.inv_freq")}  # an old buffer, no weight
    if config.tie_weights:
        hf.pop("lm_head.weight", None)  # a tied head is wte itself (some files store a copy)
    wanted = [name for _, name in renamed_tensors(config)] + [n for _, names in qkv_names(config) for n in names]
    missing, unexpected = sorted(set(wanted) - set(hf)), sorted(set(hf) - set(wanted))
    if missing or unexpected:
        raise ValueError(f"the weights do not fit config.json: missing {missing[:3]}, unexpected {unexpected[:3]}")
    ours = {our_name: hf[their_name] for our_name, their_name in renamed_tensors(config)}
    for our_name, (q, k, v) in qkv_names(config):
        ours[our_name] = torch.cat([hf[q], hf[k], hf[v]])  # rows: n_embd of q, then kv_width of k and of v
    return ours


def load_hf_llama(folder: str | Path, attention: str = "manual", block_size: int | None = None) -> GPT:
    """Build our GPT from a transformers Llama folder (config.json + model.safetensors), in float32.

    block_size: the longest context to allow (default: the config's max_position_embeddings).
    RoPE has no position table, so this is only a limit, and a smaller one keeps a KV cache small.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; download one first (see python -m gpt_scratch "
                                f"import-llama --help)")
    config = read_llama_config(folder, attention, block_size)
    model = GPT(config)
    weights = hf_to_ours(read_hf_weights(folder), config)
    own = model.state_dict()
    wrong_shape = [f"{n} {tuple(weights[n].shape)} (ours {tuple(own[n].shape)})"
                   for n in weights if weights[n].shape != own[n].shape]
    if wrong_shape:
        raise ValueError(f"{folder}/model.safetensors does not fit its config.json: wrong shapes {wrong_shape[:3]}")
    model.load_state_dict(weights, strict=not config.tie_weights)  # tied: lm_head.weight is wte's, loaded with it
    return model.eval()


def hf_llama_config(config: GPTConfig, bos_id: int | None = None, eos_id: int | None = None) -> dict:
    """Our GPTConfig -> the config.json of transformers' LlamaForCausalLM."""
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        "vocab_size": config.vocab_size, "hidden_size": config.n_embd, "intermediate_size": config.mlp_width,
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads, "head_dim": config.head_dim, "hidden_act": "silu",
        "max_position_embeddings": config.block_size, "rms_norm_eps": config.layer_norm_eps,
        # transformers 5 reads rope_parameters, earlier versions rope_theta: both are written
        "rope_theta": config.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": config.bias, "mlp_bias": config.bias, "attention_dropout": config.dropout,
        "tie_word_embeddings": config.tie_weights, "initializer_range": 0.02, "torch_dtype": "float32",
        "bos_token_id": bos_id, "eos_token_id": eos_id,
    }


def ours_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """Our tensors under transformers' names, c_attn cut back into q, k and v."""
    config, state = model.config, model.state_dict()
    kv_width = config.kv_heads * config.head_dim
    hf = {their_name: state[our_name] for our_name, their_name in renamed_tensors(config)}
    for our_name, names in qkv_names(config):
        hf.update(zip(names, state[our_name].split([config.n_embd, kv_width, kv_width])))
    # tied: no lm_head.weight (safetensors refuses one tensor under two names); transformers re-ties it
    return {name: t.detach().float().cpu().contiguous() for name, t in hf.items()}


def check_llama_layout(config: GPTConfig) -> None:
    if (config.norm, config.position, config.mlp) != ("rmsnorm", "rope", "swiglu"):
        raise ValueError(f"a Llama has RMSNorm, RoPE and SwiGLU; this model has norm={config.norm!r}, "
                         f"position={config.position!r}, mlp={config.mlp!r} (train it with llama_config, or save a "
                         f"GPT-2 layout with gpt_scratch.gpt2.save_hf_gpt2)")


def save_hf_llama(model: GPT, folder: str | Path, bos_id: int | None = None, eos_id: int | None = None) -> Path:
    """Write folder/config.json and folder/model.safetensors in transformers' Llama layout (float32)."""
    check_llama_layout(model.config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.safetensors") as tmp:  # atomic (files.py): never half a file
        save_file(ours_to_hf(model), str(tmp), metadata={"format": "pt"})  # transformers wants "format"
    write_atomic(folder / "config.json", json.dumps(hf_llama_config(model.config, bos_id, eos_id), indent=2) + "\n")
    return folder


# ---- the two commands: import-llama and export-llama ----

def import_llama(hf: str | Path, out: str | Path, block_size: int | None = None) -> Path:
    """A transformers Llama folder -> out/checkpoint (no course tokenizer) and out/hf_tokenizer (its files)."""
    hf, out = Path(hf), Path(out)
    model = load_hf_llama(hf, block_size=block_size)
    token_ids = {key: read_json(hf / "config.json", "config.json").get(key) for key in ("bos_token_id", "eos_token_id")}
    folder = save_checkpoint(out / "checkpoint", model, None, {"stage": "import-llama", "source": str(hf), **token_ids})
    shutil.rmtree(out / TOKENIZER_FOLDER, ignore_errors=True)  # no stale files of an earlier import
    for path in [hf / name for name in TOKENIZER_FILES if (hf / name).is_file()]:
        (out / TOKENIZER_FOLDER).mkdir(exist_ok=True)
        shutil.copyfile(path, out / TOKENIZER_FOLDER / path.name)
    return folder


def export_llama(checkpoint: str | Path, out: str | Path) -> Path:
    """A course checkpoint in the Llama layout -> a transformers folder, with the files import_llama kept aside."""
    model, _, meta = load_checkpoint(checkpoint)
    check_llama_layout(model.config)
    folder = save_hf_llama(model, out, meta.get("bos_token_id"), meta.get("eos_token_id"))
    tokenizer_folder = find_checkpoint(checkpoint).parent / TOKENIZER_FOLDER
    for path in sorted(tokenizer_folder.glob("*")) if tokenizer_folder.is_dir() else []:
        shutil.copyfile(path, folder / path.name)
    return folder


HELP_TOKENIZER = ("The course's tokenizer does not read a Hugging Face tokenizer.json, so the checkpoint "
                  "holds no course tokenizer: it gives logits for token ids (encode text with transformers' "
                  "AutoTokenizer), and stages that need text refuse it. The tokenizer files are kept in "
                  f"OUT/{TOKENIZER_FOLDER}; export-llama writes them back.")


# The commands: python -m gpt_scratch import-llama, and export-llama ------------------------------------------

IMPORT_DESCRIPTION = (f"{__doc__.splitlines()[0]} {HELP_TOKENIZER} Downloading real weights needs the internet "
                      f"once: hf download HuggingFaceTB/SmolLM2-135M --local-dir smollm2")
EXPORT_DESCRIPTION = ("Writes config.json and model.safetensors (float32) that transformers' "
                      "LlamaForCausalLM.from_pretrained reads, plus the tokenizer files kept by import-llama, if any.")


@dataclass
class ImportOptions:
    hf: str = setting(None, "a folder with config.json + model.safetensors (or shards)", preset=False, required=True)
    out: str = setting("runs/llama/base", "stage folder; the checkpoint goes into its checkpoint/", preset=False)
    block_size: int | None = setting(None, "the longest context to allow (default: the config's "
                                           "max_position_embeddings); smaller keeps a KV cache small",
                                     type=int_range(2), preset=False)


@dataclass
class ExportOptions:
    checkpoint: str = setting(None, "a checkpoint or stage folder", preset=False, required=True)
    out: str = setting(None, "the folder to write", preset=False, required=True)


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = IMPORT_DESCRIPTION
    add_flags(parser, ImportOptions)


def run_import(args: argparse.Namespace) -> int:
    options = from_flags(ImportOptions, args)
    folder = import_llama(options.hf, options.out, options.block_size)
    kept = Path(options.out) / TOKENIZER_FOLDER
    where = f"its tokenizer files are in {kept}" if kept.is_dir() else "the folder had no tokenizer files"
    print(f"imported {options.hf} into {folder} (float32, no course tokenizer: {where}; encode text with "
          f"transformers' AutoTokenizer); back to Hugging Face: python -m gpt_scratch export-llama "
          f"--checkpoint {options.out} --out FOLDER")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = EXPORT_DESCRIPTION
    add_flags(parser, ExportOptions)


def run_export(args: argparse.Namespace) -> int:
    options = from_flags(ExportOptions, args)
    folder = export_llama(options.checkpoint, options.out)
    print(f"exported {options.checkpoint} to {folder}; LlamaForCausalLM.from_pretrained({str(folder)!r}) reads it")
    return 0
