"""Talk to a model you trained: a chat in the terminal, with the conversation as the prompt.

    python -m gpt_scratch chat --checkpoint runs/default/sft
    python -m gpt_scratch chat --checkpoint runs/default/sft --temperature 0.8 --top-k 40 --seed 1
    python -m gpt_scratch chat --checkpoint runs/gpt2/sft     # trained with --template alpaca: asked in it

    you> What is 3 plus 4?
    model> The answer is 7.
    you> Reverse the letters.\\n\\nc a t
    model> t a c

A question is one line. Type \\n (a backslash, then n) where it needs a line break: the course's
tasks put their input after a blank line, as in "Reverse the letters.\\n\\nc a t" above.
Empty lines are skipped; /reset forgets the conversation; /quit, Ctrl-D (end of input) or Ctrl-C
leave. A line whose first word starts with "/" is a command, in any case (/QUIT, "/quit now").
Any checkpoint of the course works (SFT, and the later stages' plain GPT checkpoints).

How it works:
1. A model answers well only in the template it was trained with, which SFT records in the
   checkpoint's config.json ("template"): the chat uses that one (choose_template). Another one
   can be asked for (--template), with a warning; a base model (pretrain) has learned none.
2. The conversation is kept as chat messages, [{"role": "user", ...}, {"role": "assistant", ...},
   ...], and encoded with the chat template (templates.py), ending where the next answer begins:
       <|user|>What is 3 plus 4?<|assistant|>The answer is 7.<|endoftext|><|user|>And...<|assistant|>
   Typing "<|user|>" yourself gives plain text, never the special token: only the template makes one.
   The alpaca template holds one question and its answer, so with it each question is asked on
   its own: the model does not see the earlier turns.
3. The model sees at most block_size tokens, and the answer needs room too (--max-new-tokens).
   When the conversation no longer fits in block_size - max_new_tokens, its oldest turns are
   dropped, with a notice. A question too long even alone is refused, and the chat goes on.
4. The answer is printed token by token as it is sampled (generate.stream), until <|endoftext|>.
   A token can end in the middle of a character (an emoji is 4 bytes), so each time we decode
   the whole answer so far and print only the new text, holding back a half character
   (answer_pieces, which the web page's server streams too).
"""

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, TextIO

from gpt_scratch.args import UsageError, int_range
from gpt_scratch.checkpoint import find_checkpoint, load_checkpoint, read_config
from gpt_scratch.generate import Sampling, generate, generate_text, stream
from gpt_scratch.hardware import pick_device
from gpt_scratch.model import GPT
from gpt_scratch.settings import add_flags, from_flags, setting
from gpt_scratch.templates import encode_prompt
from gpt_scratch.tokenizer import ASSISTANT, USER, Tokenizer

COMMANDS = "/reset forgets the conversation, /quit or Ctrl-D leaves; type \\n for a line break"
QUIT, RESET = "/quit", "/reset"


def read_question(line: str) -> str:
    """A typed line -> the question: a typed \\n becomes a line break, outer spaces go."""
    return line.replace("\\n", "\n").strip()


def command_of(question: str) -> str | None:
    """The command a line gives, in lower case, or None for a question: its first word, if that starts with "/".

        command_of("/QUIT") == "/quit";  command_of("/quit now") == "/quit";  command_of("3 / 4?") is None
    """
    words = question.split()
    return words[0].lower() if words and words[0].startswith("/") and len(words[0]) > 1 else None


def choose_template(path: str | Path, meta: dict, asked: str | None, base_default: str) -> tuple[str, str | None]:
    """(the template to use, a one-line note to print or None): the checkpoint's own unless another is asked.

    meta is the checkpoint's (config.json's "meta"); SFT and the stages after it record "template".
    asked: --template, None when not given; "none" (generate only) means plain text to continue.
    base_default: what a base model without a template gets when nothing is asked.

        choose_template("runs/default/sft", {"template": "chat"}, None, "none") == ("chat", None)
    """
    trained = meta.get("template")
    if trained is None:  # a base model: pretrain, import-gpt2
        using = asked or base_default
        what = ("continuing the prompt as plain text (fine-tune it with `sft` before asking it questions)"
                if using == "none" else
                f"it has not learned to answer in the {using} template: fine-tune it with `sft` first")
        return using, f"note: {path} is a base model ({meta.get('stage', 'unknown stage')}) with no template; {what}"
    if asked is None or asked == trained:
        return trained, None
    if asked == "none":
        return asked, (f"warning: {path} was trained with the {trained} template; --template none continues "
                       f"the prompt as plain text instead")
    return asked, (f"warning: {path} was trained with the {trained} template, not {asked}: its answers in the "
                   f"{asked} template may be wrong (leave out --template to use {trained})")


def question_record(text: str) -> dict:
    """One question as an instruction record; an input after a blank line becomes the record's input.

    The chat template writes instruction + "\\n\\n" + input as one user turn (the text itself);
    the alpaca template puts the input under its own "### Input:" header, as in training.
    """
    instruction, _, input_text = text.partition("\n\n")
    return {"instruction": instruction, "input": input_text, "output": ""}


def encode_question(tokenizer: Tokenizer, text: str, template: str) -> list[int]:
    """The prompt ids of one question in a template (alpaca or chat): what the answer continues."""
    return encode_prompt(tokenizer, question_record(text), template)


def encode_conversation(tokenizer: Tokenizer, history: list[dict], question: str,
                        template: str = "chat") -> list[int]:
    """The ids of the conversation so far plus the new question, up to where the answer begins.

    chat: every turn, up to <|assistant|>. alpaca holds one question and its answer: the history
    must be empty (the chat keeps none with it), and the question is encoded as generate asks it.
    """
    if template == "alpaca":
        if history:
            raise ValueError("the alpaca template holds one question and its answer, not a conversation")
        return encode_question(tokenizer, question, template)
    messages = history + [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
    return encode_prompt(tokenizer, {"messages": messages}, template)


def fit_conversation(tokenizer: Tokenizer, history: list[dict], question: str,
                     budget: int, template: str = "chat") -> tuple[list[dict], list[int]] | None:
    """(the history that fits, the prompt ids): the oldest turns (question + answer) dropped until
    the prompt has at most `budget` tokens. None if the question alone is longer than that."""
    while True:
        ids = encode_conversation(tokenizer, history, question, template)
        if len(ids) <= budget:
            return history, ids
        if not history:
            return None
        history = history[2:]  # one turn: the user's message and the model's answer


def answer_pieces(model: GPT, tokenizer: Tokenizer, prompt: list[int], max_new_tokens: int, temperature: float,
                  top_k: int | None, top_p: float | None, seed: int | None) -> Iterator[str]:
    """The answer's text piece by piece, as it is sampled (until the end-of-text token, which is left out).

    A token can end in the middle of a character, so each time the whole answer so far is decoded
    and only the new text comes out, a half character held back until its other bytes arrive.
    """
    ids: list[int] = []
    shown = ""
    for token in stream(model, prompt, max_new_tokens, temperature, top_k, top_p, tokenizer.eot_id, seed):
        if token == tokenizer.eot_id:
            break
        ids.append(token)
        ready = tokenizer.decode(ids).rstrip("\ufffd")  # a half character waits for its other bytes
        if len(ready) > len(shown):
            yield ready[len(shown):]
            shown = ready
    rest = tokenizer.decode(ids)[len(shown):]  # whatever was held back (bytes that never became a character)
    if rest:
        yield rest


def stream_answer(model: GPT, tokenizer: Tokenizer, prompt: list[int], out: TextIO, max_new_tokens: int,
                  temperature: float, top_k: int | None, top_p: float | None, seed: int | None) -> str:
    """Print the answer to `out` as it comes; return it (without the end-of-text token)."""
    answer = ""
    for piece in answer_pieces(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed):
        out.write(piece)
        out.flush()
        answer += piece
    out.write("\n")
    out.flush()
    return answer


def has_chat_tokens(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer can write the chat template (GPT-2's own has only <|endoftext|>)."""
    return USER in tokenizer.special_tokens and ASSISTANT in tokenizer.special_tokens


def prompt_budget(model: GPT, tokenizer: Tokenizer, max_new_tokens: int, template: str = "chat") -> int:
    """How many prompt tokens leave room for a whole answer; ValueError if a chat cannot work."""
    if template == "chat":
        tokenizer.special_id(USER), tokenizer.special_id(ASSISTANT)  # a one-line error without them
    block_size = model.config.block_size
    if block_size - max_new_tokens < 3:  # <|user|>, one token of question, <|assistant|>
        raise ValueError(f"--max-new-tokens {max_new_tokens} leaves no room for a question in the model's "
                         f"context of {block_size} tokens; use at most {block_size - 3}")
    return block_size - max_new_tokens


def chat(model: GPT, tokenizer: Tokenizer, max_new_tokens: int = 32, temperature: float = 0.0,
         top_k: int | None = None, top_p: float | None = None, seed: int = 0,
         out: TextIO | None = None, template: str = "chat") -> int:
    """The chat loop: read a line from stdin, answer it, repeat; 0 at /quit or end of input.

    template: the one the model was trained with; with alpaca each question is asked on its own.
    """
    out = out or sys.stdout
    budget = prompt_budget(model, tokenizer, max_new_tokens, template)
    block_size = model.config.block_size
    echo = not sys.stdin.isatty()  # piped input is not shown by the terminal: show it in the transcript
    history: list[dict] = []
    turn = 0
    try:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                print(file=out)
                return 0
            if echo:
                print(line, file=out)
            question = read_question(line)
            if not question:
                continue
            command = command_of(question)
            if command == QUIT:
                return 0
            if command == RESET:
                history = []
                print("(conversation cleared)", file=out)
                continue
            if command is not None:
                print(f"(unknown command {command}: {COMMANDS})", file=out)
                continue
            fitted = fit_conversation(tokenizer, history, question, budget, template)
            if fitted is None:
                n = len(encode_conversation(tokenizer, [], question, template))
                print(f"(that question is {n} tokens, but the context of {block_size} holds {budget} besides "
                      f"the answer's {max_new_tokens}: ask something shorter, or lower --max-new-tokens)", file=out)
                continue
            kept, prompt = fitted
            if len(kept) < len(history):
                dropped = (len(history) - len(kept)) // 2
                oldest = "the oldest turn" if dropped == 1 else f"the {dropped} oldest turns"
                print(f"(dropped {oldest}: the conversation no longer fits the context of {block_size} tokens)",
                      file=out)
            out.write("model> ")
            answer = stream_answer(model, tokenizer, prompt, out, max_new_tokens, temperature, top_k, top_p,
                                   seed + turn if temperature > 0 else None)
            if template == "chat":  # the alpaca template has no room for earlier turns
                history = kept + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            turn += 1
    except KeyboardInterrupt:  # Ctrl-C: leave quietly, without a traceback
        print(file=out)
        return 0


def chat_with_checkpoint(path: str | Path, template: str | None = None, **settings) -> int:
    """Load a checkpoint (stage or checkpoint folder) and chat with it in the template it was trained with.

    template: another template to use instead (a warning says so); settings go to chat().
    """
    model, tokenizer, meta = load_checkpoint(path, device=pick_device("auto"))
    if tokenizer is None:
        raise FileNotFoundError(f"{path} has no tokenizer files; use a checkpoint saved by a stage")
    template, note = choose_template(path, meta, template, "chat" if has_chat_tokens(tokenizer) else "alpaca")
    prompt_budget(model, tokenizer, settings.get("max_new_tokens", 32), template)  # refused before the greeting
    if note:
        print(note, file=sys.stderr)
    memory = "" if template == "chat" else "; each question is asked on its own, without the earlier turns"
    print(f"chat with {path} ({meta.get('stage', 'unknown')} model, {model.num_parameters():,} parameters, "
          f"context {model.config.block_size} tokens, {template} template{memory}). {COMMANDS}.")
    return chat(model, tokenizer, template=template, **settings)


# The commands: python -m gpt_scratch chat, and generate ----------------------------------------------------

@dataclass
class ChatOptions:
    checkpoint: str = setting("runs/default/sft", "checkpoint or stage folder of any stage", preset=False)
    template: str | None = setting(None, "the prompt template (default: the one the checkpoint was trained with, "
                                         "which SFT records; chat for a base model whose tokenizer has the chat "
                                         "tokens, else alpaca)", choices=("chat", "alpaca"), preset=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, ChatOptions)
    add_flags(parser, Sampling)


def run(args: argparse.Namespace) -> int:
    options, sampling = from_flags(ChatOptions, args), from_flags(Sampling, args)
    return chat_with_checkpoint(options.checkpoint, template=options.template, **asdict(sampling))


@dataclass
class GenerateOptions:
    checkpoint: str = setting("runs/default/pretrain", "checkpoint or stage folder", preset=False)
    prompt: str = setting("Once upon a time", "text to continue (with a template: the question)", preset=False)
    template: str | None = setting(None, "chat or alpaca: put the prompt into this template as a question (a typed "
                                         "\\n is a line break) and print only the answer, which ends at end-of-text; "
                                         "none: continue the prompt as plain text. Default: the template the "
                                         "checkpoint was trained with (SFT records it); none for a base model",
                                   choices=("none", "chat", "alpaca"), preset=False)
    num_samples: int = setting(1, "how many samples", type=int_range(1, 64), preset=False)
    crop: bool = setting(False, "keep the end of a prompt longer than the context", preset=False)


GENERATE_DEFAULTS = {"max_new_tokens": 100, "temperature": None}  # None: 0 for a question, 0.8 for plain text


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, GenerateOptions)
    add_flags(parser, Sampling, defaults={**GENERATE_DEFAULTS, "temperature": "0 for a question (as chat and the "
                                                                               "evaluation answer), 0.8 for plain "
                                                                               "text to continue"})


def run_generate(args: argparse.Namespace) -> int:
    options = from_flags(GenerateOptions, args)
    if args.temperature is not None:
        check_samples(from_flags(Sampling, args, GENERATE_DEFAULTS), options.num_samples, "")  # before any file
    _, meta = read_config(find_checkpoint(options.checkpoint))
    template, note = choose_template(options.checkpoint, meta, options.template, "none")
    defaults = {**GENERATE_DEFAULTS, "temperature": 0.8 if template == "none" else 0.0}
    sampling = from_flags(Sampling, args, defaults)
    check_samples(sampling, options.num_samples, "" if args.temperature is not None else ", the default for a question")
    model, tokenizer, _ = load_checkpoint(options.checkpoint, device=pick_device("auto"))
    if tokenizer is None:
        raise FileNotFoundError(f"{options.checkpoint} has no tokenizer files; use a checkpoint saved by a stage")
    settings = {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p,
                "seed": sampling.seed, "crop": options.crop}
    if template == "none":  # plain continuation: the prompt and what follows it
        texts = [options.prompt + text for text in generate_text(model, tokenizer, [options.prompt] * options.num_samples,
                                                                 sampling.max_new_tokens, **settings)]
    else:  # a question: the answer only, without its end-of-text token
        prompt = encode_question(tokenizer, read_question(options.prompt), template)
        answers = generate(model, [prompt] * options.num_samples, sampling.max_new_tokens, eos_id=tokenizer.eot_id,
                           **settings)
        texts = [tokenizer.decode(ids[:-1] if ids and ids[-1] == tokenizer.eot_id else ids) for ids in answers]
    if note:  # once the text is there (a refused prompt is the one line of its error)
        print(note, file=sys.stderr)  # stderr: stdout holds only the text, for scripts
    print(("\n" + "-" * 40 + "\n").join(texts))  # a line between samples, when there are several
    return 0


def check_samples(sampling: Sampling, num_samples: int, why: str) -> None:
    """Several samples from greedy decoding would all be the same answer."""
    if sampling.temperature == 0 and num_samples > 1:
        raise UsageError(f"--num-samples {num_samples} with --temperature 0{why} (greedy) gives {num_samples} "
                         f"identical samples; give --temperature > 0 to sample")
