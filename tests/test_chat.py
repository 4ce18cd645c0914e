"""`python -m gpt_scratch chat` and `generate --template`: talk to a tiny model fine-tuned to answer 'yes'.

The chat reads stdin (a StringIO here) and prints to stdout; a spy on chat.stream records every
prompt the model is given, so that the tests can check what the conversation looked like.
One base model is fine-tuned twice, once in each template, so that the tests can check that
both tools use the template a checkpoint was trained with.
"""

import io
import re
import sys

import pytest
import torch

import gpt_scratch.chat as chat_module
import gpt_scratch.generate as generate_module
from gpt_scratch.chat import (choose_template, command_of, encode_conversation, encode_question, fit_conversation,
                              read_question, stream_answer)
from gpt_scratch.checkpoint import load_checkpoint, save_checkpoint
from gpt_scratch.cli import main
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.sft import sft
from gpt_scratch.templates import encode_example, encode_prompt
from gpt_scratch.tokenizer import ASSISTANT, EOT, USER, Tokenizer
from gpt_scratch.train import TrainConfig
from tiny import write_yes_data

BLOCK = 64
QUESTION = "Is 5 a number?"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()  # two shared cores: one thread keeps tiny ops fast
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """{"base": a base stage folder, "chat" and "alpaca": SFT stage folders trained in that template}: models
    that answer 'Is N a number?' with 'yes' and stop (a few seconds each)."""
    root = tmp_path_factory.mktemp("chat")
    tokenizer = Tokenizer.train("Is 3 a number? yes. Is 12 a number? yes. Reverse the letters. " * 20, 280)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.n_vocab, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint(root / "base" / "checkpoint", GPT(config), tokenizer, {"stage": "pretrain"})
    data = write_yes_data(root / "data", n_train=32, n_test=4)
    cfg = TrainConfig(max_steps=60, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=100, save_every=100)
    for template in ("chat", "alpaca"):
        metrics = sft(root / "base", data, root / template, cfg, template, quiet=True, score_before=False)
        assert metrics["accuracy_after"] == 1.0
    return {name: root / name for name in ("base", "chat", "alpaca")}


@pytest.fixture(scope="module")
def trained(stages):
    """The SFT stage folder trained in the chat template (SFT's default)."""
    return stages["chat"]


@pytest.fixture(scope="module")
def tokenizer(trained):
    return load_checkpoint(trained)[1]


@pytest.fixture
def prompts(monkeypatch):
    """Every prompt (token ids) the chat gives the model, in order."""
    seen = []
    real_stream = chat_module.stream

    def spy(model, prompt, *args, **kwargs):
        seen.append(list(prompt))
        return real_stream(model, prompt, *args, **kwargs)

    monkeypatch.setattr(chat_module, "stream", spy)
    return seen


def run_chat(monkeypatch, capsys, trained, typed: str, *flags) -> tuple[int, str, str]:
    """main(["chat", ...]) with `typed` as the keyboard: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(typed))
    try:
        code = main(["chat", "--checkpoint", str(trained), "--max-new-tokens", "8", *map(str, flags)])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def answers(out: str) -> list[str]:
    return [line.removeprefix("model> ") for line in out.splitlines() if line.startswith("model> ")]


def turn(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


# --- the conversation as chat-template ids ---------------------------------------------------------------

def test_a_typed_backslash_n_is_a_line_break():
    assert read_question("  Reverse the letters.\\n\\nc a t \n") == "Reverse the letters.\n\nc a t"


@pytest.mark.parametrize("template", ["chat", "alpaca"])
def test_one_question_is_the_prompt_that_training_saw(tokenizer, template):
    record = {"instruction": "Reverse the letters.", "input": "c a t", "output": "t a c"}
    assert encode_question(tokenizer, "Reverse the letters.\n\nc a t", template) == \
        encode_prompt(tokenizer, record, template)
    assert encode_question(tokenizer, QUESTION, template) == \
        encode_prompt(tokenizer, {"prompt": QUESTION, "completion": "yes"}, template)


def test_the_second_prompt_holds_the_first_turn(tokenizer):
    history = turn(QUESTION, "yes")
    ids = encode_conversation(tokenizer, history, "Is 7 a number?")
    first_turn = encode_example(tokenizer, {"messages": history}, "chat")[0]
    assert ids[:len(first_turn)] == first_turn
    assert tokenizer.decode(ids) == f"{USER}{QUESTION}{ASSISTANT}yes{EOT}{USER}Is 7 a number?{ASSISTANT}"
    typed = encode_conversation(tokenizer, [], f"{USER}hi")  # typed special-token text stays plain text
    assert typed.count(tokenizer.special_id(USER)) == 1


def test_the_oldest_turns_go_first_when_the_context_is_full(tokenizer):
    history = turn("Is 1 a number?", "yes") + turn("Is 2 a number?", "yes") + turn("Is 3 a number?", "yes")
    full = encode_conversation(tokenizer, history, QUESTION)
    assert fit_conversation(tokenizer, history, QUESTION, len(full)) == (history, full)
    kept, ids = fit_conversation(tokenizer, history, QUESTION, len(full) - 1)
    assert kept == history[2:] and ids == encode_conversation(tokenizer, history[2:], QUESTION)
    alone = encode_conversation(tokenizer, [], QUESTION)
    assert fit_conversation(tokenizer, history, QUESTION, len(alone)) == ([], alone)
    assert fit_conversation(tokenizer, history, QUESTION, len(alone) - 1) is None


def test_a_character_split_across_tokens_is_printed_whole(tokenizer, monkeypatch):
    text = "aé€😀"
    byte_ids = list(text.encode("utf-8"))  # the first 256 ids of a byte-level tokenizer are the bytes
    monkeypatch.setattr(chat_module, "stream", lambda *args: iter(byte_ids + [tokenizer.eot_id]))
    writes = []

    class Recorder(io.StringIO):
        def write(self, s):
            writes.append(s)
            return super().write(s)

    answer = stream_answer(None, tokenizer, [0], Recorder(), 20, 0.0, None, None, None)
    assert answer == text
    assert [piece for piece in writes if piece] == ["a", "é", "€", "😀", "\n"]  # each character once it is whole


# --- the chat in the terminal --------------------------------------------------------------------------

def test_the_model_answers_and_quit_leaves(monkeypatch, capsys, trained, prompts):
    code, out, err = run_chat(monkeypatch, capsys, trained, f"{QUESTION}\n/quit\nIs 6 a number?\n")
    assert code == 0 and err == ""
    assert answers(out) == ["yes"]  # nothing after /quit is read
    assert f"you> {QUESTION}\n" in out  # piped input is echoed into the transcript
    assert out.splitlines()[0].startswith(f"chat with {trained} (sft model")


def test_two_turns_keep_the_history(monkeypatch, capsys, trained, prompts, tokenizer):
    code, out, _ = run_chat(monkeypatch, capsys, trained, f"{QUESTION}\nIs 7 a number?\n")
    assert code == 0 and answers(out)[0] == "yes" and len(answers(out)) == 2
    first_answer = encode_example(tokenizer, {"messages": turn(QUESTION, "yes")}, "chat")[0]
    assert prompts[1][:len(first_answer)] == first_answer  # the second prompt holds the whole first turn
    assert prompts[1] == encode_conversation(tokenizer, turn(QUESTION, "yes"), "Is 7 a number?")


def test_reset_forgets_the_conversation(monkeypatch, capsys, trained, prompts, tokenizer):
    code, out, _ = run_chat(monkeypatch, capsys, trained, f"{QUESTION}\n/reset\n{QUESTION}\n")
    assert code == 0 and "(conversation cleared)" in out
    assert prompts[0] == prompts[1] == encode_conversation(tokenizer, [], QUESTION)


def test_end_of_input_and_empty_lines(monkeypatch, capsys, trained, prompts):
    code, out, err = run_chat(monkeypatch, capsys, trained, f"\n   \n{QUESTION}\n\n")  # no /quit: Ctrl-D
    assert code == 0 and err == "" and answers(out) == ["yes"] and len(prompts) == 1
    code, out, _ = run_chat(monkeypatch, capsys, trained, "")
    assert code == 0 and answers(out) == []


def test_a_full_context_drops_the_oldest_turn_with_a_notice(monkeypatch, capsys, trained, prompts, tokenizer):
    questions = [f"Is {n} a number?" for n in range(1, 9)]
    code, out, _ = run_chat(monkeypatch, capsys, trained, "\n".join(questions) + "\n", "--max-new-tokens", "24")
    assert code == 0 and len(prompts) == len(questions)
    assert all(len(p) <= BLOCK - 24 for p in prompts)
    notices = [line for line in out.splitlines() if line.startswith("(dropped")]
    assert notices and notices[0] == ("(dropped the oldest turn: the conversation no longer fits the context "
                                      f"of {BLOCK} tokens)")
    last = tokenizer.decode(prompts[-1])
    assert questions[0] not in last and last.endswith(f"{USER}{questions[-1]}{ASSISTANT}")


def test_a_question_too_long_for_the_context_is_refused_and_the_chat_goes_on(monkeypatch, capsys, trained, prompts):
    long_question = "Is 3 a number? " * 12
    code, out, err = run_chat(monkeypatch, capsys, trained, f"{long_question}\n{QUESTION}\n")
    assert code == 0 and err == ""
    refusals = [line for line in out.splitlines() if line.startswith("(that question is")]
    assert len(refusals) == 1 and "ask something shorter" in refusals[0]
    assert answers(out) == ["yes"] and len(prompts) == 1


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-1"], r"argument --temperature"),
    (["--top-k", "5"], r"--top-k has no effect with --temperature 0"),
    (["--top-p", "0.9"], r"--top-p has no effect with --temperature 0"),
    (["--top-p", "0", "--temperature", "1"], r"argument --top-p"),
    (["--max-new-tokens", "0"], r"argument --max-new-tokens"),
    (["--seed", "-2"], r"argument --seed"),
])
def test_bad_flags_exit_2_with_one_line_before_the_checkpoint_is_read(monkeypatch, capsys, tmp_path, flags, message):
    code, out, err = run_chat(monkeypatch, capsys, tmp_path / "missing", "", *flags)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert re.search(message, lines[0]) and "no checkpoint" not in err
    assert out == ""


def test_a_missing_or_unusable_checkpoint_is_one_line(monkeypatch, capsys, trained, tmp_path):
    code, out, err = run_chat(monkeypatch, capsys, tmp_path / "missing", "")
    assert code == 2 and "no checkpoint in" in err and len(err.strip().splitlines()) == 1 and out == ""
    code, out, err = run_chat(monkeypatch, capsys, trained, "", "--max-new-tokens", BLOCK - 2)
    assert code == 2 and f"use at most {BLOCK - 3}" in err and out == ""
    # A tokenizer without the chat template's tokens (GPT-2's has only <|endoftext|>).
    tokenizer = load_checkpoint(trained)[1]
    plain = Tokenizer(tokenizer.ranks, {EOT: len(tokenizer.ranks)})
    folder = save_checkpoint(tmp_path / "plain", GPT(GPTConfig(vocab_size=plain.n_vocab, block_size=BLOCK,
                                                               n_layer=1, n_head=2, n_embd=16)), plain)
    code, out, err = run_chat(monkeypatch, capsys, folder, "", "--template", "chat")
    assert code == 2 and "no special token <|user|>" in err and out == ""
    code, out, err = run_chat(monkeypatch, capsys, folder, "")  # without the chat tokens: alpaca, with a note
    assert code == 0 and "alpaca template" in out.splitlines()[0]
    assert err.strip() == (f"note: {folder} is a base model (unknown stage) with no template; it has not learned "
                           f"to answer in the alpaca template: fine-tune it with `sft` first")


# --- the template a checkpoint was trained with ------------------------------------------------------

def test_the_checkpoints_template_is_the_default_and_another_one_is_a_warning_naming_both():
    path = "runs/x/sft"
    assert choose_template(path, {"stage": "sft", "template": "alpaca"}, None, "chat") == ("alpaca", None)
    assert choose_template(path, {"stage": "sft", "template": "alpaca"}, "alpaca", "chat") == ("alpaca", None)
    template, warning = choose_template(path, {"stage": "dpo", "template": "chat"}, "alpaca", "chat")
    assert template == "alpaca" and warning == (
        "warning: runs/x/sft was trained with the chat template, not alpaca: its answers in the alpaca template "
        "may be wrong (leave out --template to use chat)")
    template, warning = choose_template(path, {"stage": "sft", "template": "chat"}, "none", "none")
    assert template == "none" and "trained with the chat template; --template none continues" in warning


def test_a_base_model_says_it_has_no_template():
    template, note = choose_template("runs/x/pretrain", {"stage": "pretrain"}, None, "none")
    assert template == "none" and note == ("note: runs/x/pretrain is a base model (pretrain) with no template; "
                                           "continuing the prompt as plain text (fine-tune it with `sft` before "
                                           "asking it questions)")
    template, note = choose_template("runs/x/pretrain", {"stage": "pretrain"}, "alpaca", "none")
    assert template == "alpaca" and "has not learned to answer in the alpaca template" in note


@pytest.mark.parametrize("template", ["chat", "alpaca"])
def test_chat_answers_in_the_template_the_checkpoint_was_trained_with(monkeypatch, capsys, stages, prompts,
                                                                     tokenizer, template):
    code, out, err = run_chat(monkeypatch, capsys, stages[template], f"{QUESTION}\nIs 7 a number?\n")
    assert code == 0 and err == "" and answers(out) == ["yes", "yes"]
    assert f"{template} template" in out.splitlines()[0]
    assert prompts[0] == encode_question(tokenizer, QUESTION, template)
    if template == "chat":  # the conversation so far
        assert prompts[1] == encode_conversation(tokenizer, turn(QUESTION, "yes"), "Is 7 a number?")
    else:  # one question and its answer: each question on its own
        assert prompts[1] == encode_question(tokenizer, "Is 7 a number?", "alpaca")
        assert "each question is asked on its own" in out.splitlines()[0]


def test_chat_in_another_template_than_the_trained_one_warns_once(monkeypatch, capsys, stages, prompts, tokenizer):
    code, out, err = run_chat(monkeypatch, capsys, stages["chat"], f"{QUESTION}\n", "--template", "alpaca")
    assert code == 0 and len(err.splitlines()) == 1
    assert err.startswith(f"warning: {stages['chat']} was trained with the chat template, not alpaca")
    assert prompts == [encode_question(tokenizer, QUESTION, "alpaca")]
    code, out, err = run_chat(monkeypatch, capsys, stages["alpaca"], "", "--template", "alpaca")
    assert code == 0 and err == ""  # the same template as trained: nothing to say


def test_chat_with_a_base_model_says_it_has_no_template(monkeypatch, capsys, stages, prompts, tokenizer):
    code, out, err = run_chat(monkeypatch, capsys, stages["base"], f"{QUESTION}\n")
    assert code == 0 and err.strip() == (f"note: {stages['base']} is a base model (pretrain) with no template; it "
                                         f"has not learned to answer in the chat template: fine-tune it with "
                                         f"`sft` first")
    assert prompts == [encode_question(tokenizer, QUESTION, "chat")]


# --- commands -------------------------------------------------------------------------------------------

def test_a_command_is_the_first_word_in_any_case():
    assert command_of("/quit") == command_of("/QUIT") == command_of("/Quit now") == "/quit"
    assert command_of("/reset   the chat") == "/reset"
    assert command_of("What is 3 / 4?") is None and command_of("/ 3 4") is None


@pytest.mark.parametrize("line", ["/QUIT", "/quit extra", "/Quit now please"])
def test_quit_in_any_case_and_with_more_words_leaves(monkeypatch, capsys, trained, prompts, line):
    code, out, _ = run_chat(monkeypatch, capsys, trained, f"{line}\n{QUESTION}\n")
    assert code == 0 and prompts == [] and answers(out) == []


def test_reset_with_more_words_resets_and_an_unknown_command_is_not_a_question(monkeypatch, capsys, trained,
                                                                               prompts, tokenizer):
    code, out, _ = run_chat(monkeypatch, capsys, trained, f"{QUESTION}\n/RESET all\n/help me\n{QUESTION}\n")
    assert code == 0 and "(conversation cleared)" in out and "(unknown command /help: /reset" in out
    assert prompts == [encode_conversation(tokenizer, [], QUESTION)] * 2


# --- generate -------------------------------------------------------------------------------------------

@pytest.fixture
def sampled(monkeypatch):
    """The prompts and the temperature of every generate() call."""
    calls = []
    real_generate = generate_module.generate

    def spy(model, prompts, max_new_tokens, **kwargs):
        calls.append({"prompts": [list(p) for p in prompts], "temperature": kwargs.get("temperature")})
        return real_generate(model, prompts, max_new_tokens, **kwargs)

    monkeypatch.setattr(generate_module, "generate", spy)  # generate_text's, for plain text
    monkeypatch.setattr(chat_module, "generate", spy)  # the generate command's, for a question
    return calls


def run_generate(capsys, folder, *flags) -> tuple[int, str, str]:
    try:
        code = main(["generate", "--checkpoint", str(folder), "--max-new-tokens", "8", *map(str, flags)])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("template", ["chat", "alpaca"])
def test_generate_answers_greedily_in_the_checkpoints_template(capsys, stages, sampled, tokenizer, template):
    code, out, err = run_generate(capsys, stages[template], "--prompt", QUESTION)
    assert code == 0 and err == "" and out == "yes\n"  # the answer alone: no separator for one sample
    assert sampled == [{"prompts": [encode_question(tokenizer, QUESTION, template)], "temperature": 0.0}]


def test_generate_in_another_template_warns_once_naming_both(capsys, stages, sampled, tokenizer):
    code, out, err = run_generate(capsys, stages["chat"], "--prompt", QUESTION, "--template", "alpaca")
    assert code == 0 and err == (f"warning: {stages['chat']} was trained with the chat template, not alpaca: its "
                                 f"answers in the alpaca template may be wrong (leave out --template to use chat)\n")
    assert sampled[0]["prompts"] == [encode_question(tokenizer, QUESTION, "alpaca")]
    code, out, err = run_generate(capsys, stages["chat"], "--prompt", QUESTION, "--template", "none")
    assert code == 0 and "--template none continues the prompt as plain text" in err and out.startswith(QUESTION)


def test_generate_on_a_base_model_continues_plain_text_and_samples(capsys, stages, sampled, tokenizer):
    code, out, err = run_generate(capsys, stages["base"], "--prompt", QUESTION)
    assert code == 0 and out.startswith(QUESTION) and "-" * 40 not in out
    assert err.startswith(f"note: {stages['base']} is a base model (pretrain) with no template; continuing")
    assert sampled == [{"prompts": [tokenizer.encode(QUESTION)], "temperature": 0.8}]
    code, out, err = run_generate(capsys, stages["base"], "--prompt", QUESTION, "--template", "chat")
    assert code == 0 and "has not learned to answer in the chat template" in err
    assert sampled[1] == {"prompts": [encode_question(tokenizer, QUESTION, "chat")], "temperature": 0.0}


def test_a_line_separates_several_samples(capsys, stages):
    code, out, _ = run_generate(capsys, stages["chat"], "--prompt", QUESTION, "--temperature", "1",
                                "--num-samples", "3")
    samples = out.split("\n" + "-" * 40 + "\n")
    assert code == 0 and len(samples) == 3 and out.count("-" * 40) == 2 and samples[-1].endswith("\n")
    assert all(sample.strip() and "-" * 40 not in sample for sample in samples)


def test_sampling_flags_with_the_greedy_default_of_a_question_exit_2(capsys, stages):
    code, out, err = run_generate(capsys, stages["chat"], "--prompt", QUESTION, "--num-samples", "2")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--num-samples 2 with --temperature 0, the default for a question (greedy) gives 2 identical" in err
    code, out, err = run_generate(capsys, stages["chat"], "--prompt", QUESTION, "--top-k", "3")
    assert code == 2 and "--top-k has no effect with --temperature 0, the default for a question" in err
    code, out, err = run_generate(capsys, stages["base"], "--prompt", QUESTION, "--top-k", "3")
    assert code == 0  # plain text is sampled by default


def test_generate_template_choices_are_checked(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--checkpoint", str(tmp_path / "missing"), "--template", "vicuna"])
    assert exit_info.value.code == 2 and "argument --template: invalid choice" in capsys.readouterr().err
