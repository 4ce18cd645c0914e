"""The command line: `python -m gpt_scratch <command> [flags]`; `--help` on any command explains it.

Each command belongs to the module that does its work, which builds its flags (add_arguments) from
its settings dataclasses (settings.py: a setting's type, default, help and checks are declared once,
as a field) and runs it (run). This file is the list of commands and what happens when one fails:
a flag that cannot work, alone or with the others, is one line and exit 2, before any file is read;
bad input the user named (a missing folder, a damaged file) one line and exit 2; a run that goes
wrong (a loss that diverges) one line and exit 1.

pretrain, sft, reward, dpo, ppo and grpo also train in several processes, one model (distributed.py):
    torchrun --standalone --nproc_per_node=2 -m gpt_scratch pretrain --corpus data/corpus.txt
--batch-size (and sft's --replay, the RL stages' --minibatch-size) is then the global batch,
shared out over the processes.
"""

import argparse
import importlib
import os
import sys

from gpt_scratch.args import OneLineParser, UsageError, print_error, yield_to_rank_0

# command -> (the module that owns it, the name of its functions there, one line of help). A module with one
# command has add_arguments and run; one with several has add_<name>_arguments and run_<name>.
COMMANDS = {
    "run": ("gpt_scratch.pipeline", "", "the whole course pipeline on the embedded default, with a report"),
    "data": ("gpt_scratch.world.command", "", "write the embedded world's corpus, tasks and preferences"),
    "pretrain": ("gpt_scratch.pretrain", "", "train a tokenizer and a GPT on a text file"),
    "import-gpt2": ("gpt_scratch.gpt2", "", "a Hugging Face GPT-2 (folder or size name) as a checkpoint with "
                                            "GPT-2's tokenizer, for sft --base and every other stage"),
    "import-llama": ("gpt_scratch.llama", "import", "a Hugging Face Llama-family folder (LlamaForCausalLM) as a "
                                                    "checkpoint"),
    "export-llama": ("gpt_scratch.llama", "export", "a checkpoint in the Llama layout as a Hugging Face Llama folder"),
    "sft": ("gpt_scratch.sft", "", "instruction fine-tuning of a pretrained model, scored by the judge"),
    "reward": ("gpt_scratch.reward", "", "train a reward model on preference pairs, measured against the hidden "
                                         "rule (chapter 8)"),
    "ppo": ("gpt_scratch.ppo", "", "RLHF with PPO: the SFT model optimised against the reward model (chapter 9)"),
    "dpo": ("gpt_scratch.dpo", "", "direct preference optimisation: the SFT model trained on the preference pairs, "
                                   "with no reward model (chapter 10)"),
    "grpo": ("gpt_scratch.grpo", "", "RL with a verifiable reward (GRPO): the judge's verdict is the reward "
                                     "(chapter 11)"),
    "compare": ("gpt_scratch.compare", "", "fine-tune with several freezing/LoRA methods and compare them"),
    "compare-alignment": ("gpt_scratch.compare_alignment", "", "SFT, PPO, DPO and its variants from one SFT model "
                                                               "and the same pairs, in one table"),
    "generate": ("gpt_scratch.chat", "generate", "continue a prompt with a trained model (or answer one question)"),
    "chat": ("gpt_scratch.chat", "", "talk to a fine-tuned model in the terminal, turn by turn"),
    "serve": ("gpt_scratch.serve", "", "chat with every model of a run in the browser, side by side (a local web "
                                       "page and a JSON API)"),
    "bench": ("gpt_scratch.bench", "", "training tokens/s, MFU and generation speed with/without KV cache"),
    "grade": ("gpt_scratch.grade_command", "", "grade exercises: a student's copy (a score table), a class (a gradebook) "
                                       "or one upload (Gradescope's results.json)"),
}
MULTI_PROCESS = ("pretrain", "sft", "reward", "dpo", "ppo", "grpo")  # the commands that train under torchrun


def command_parser(name: str) -> OneLineParser:
    """The command's own parser, its flags added by the module that owns it."""
    module_name, part, help_line = COMMANDS[name]
    parser = OneLineParser(prog=f"python -m gpt_scratch {name}", description=help_line)
    add_arguments = getattr(importlib.import_module(module_name), f"add_{part}_arguments" if part else "add_arguments")
    add_arguments(parser)
    return parser


def top_parser() -> OneLineParser:
    """`python -m gpt_scratch --help`: the commands, each with its line (no command module is imported)."""
    listing = "\n".join(f"  {name:<19} {help_line}" for name, (_, _, help_line) in COMMANDS.items())
    parser = OneLineParser(prog="python -m gpt_scratch", formatter_class=argparse.RawDescriptionHelpFormatter,
                           description=f"{__doc__}\ncommands:\n{listing}")
    parser.add_argument("command", choices=COMMANDS, metavar="<command>", help="one of the commands above")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="the command's flags (see <command> --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    name = top_parser().parse_args(argv[:1]).command  # exits 2 with one line for a command that does not exist
    parser = command_parser(name)
    args = parser.parse_args(argv[1:])
    several = os.environ.get("WORLD_SIZE", "1") != "1"  # started by torchrun (distributed.world_size)
    if several and name not in MULTI_PROCESS:
        parser.error(f"{name} does not run in several processes: run it without torchrun (only "
                     f"{', '.join(MULTI_PROCESS)} train under torchrun)")
    if several:
        args.quiet = args.quiet or os.environ.get("RANK", "0") != "0"  # one progress bar and one report: rank 0's
    module_name, part, _ = COMMANDS[name]
    run = getattr(importlib.import_module(module_name), f"run_{part}" if part else "run")
    try:
        return run(args)
    except UsageError as err:  # a flag that cannot work: one line, see --help, exit 2
        parser.error(str(err))
    except (FileNotFoundError, ValueError) as err:  # bad input named by the user: one line, exit 2
        yield_to_rank_0()  # under torchrun: one line, rank 0's
        print_error(parser.prog, str(err))
        return 2
    except RuntimeError as err:  # e.g. a diverging run: one line, exit 1
        print_error(parser.prog, str(err))
        return 1
    finally:
        if name in MULTI_PROCESS:  # (imported here: the other commands never import torch's distributed package)
            from gpt_scratch import distributed
            distributed.stop()
