"""Chapter 5: templates, end-of-text, loss masking, collate, batches and the SFT stage itself."""

import json

import pytest
import torch

from gpt_scratch.checkpoint import save_checkpoint
from gpt_scratch.model import GPT, GPTConfig, lm_loss
from gpt_scratch.sft import IGNORE, Encoded, ExampleBatches, collate, encode_records, sft
from gpt_scratch.templates import encode_example, encode_prompt
from gpt_scratch.tokenizer import ASSISTANT, EOT, USER, Tokenizer
from gpt_scratch.train import TrainConfig
from tiny import LAYOUTS, layout_config, write_yes_data

ALPACA = {"instruction": "What is 3 plus 4?", "input": "", "output": "The answer is 7."}
WITH_INPUT = {"instruction": "Reverse the letters.", "input": "c a t", "output": "t a c"}
CHAT = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "What is 3 plus 4?"}, {"role": "assistant", "content": "7"},
                     {"role": "user", "content": "And 5 plus 5?"}, {"role": "assistant", "content": "10"}]}
COMPLETION = {"prompt": "Say yes.", "completion": "yes"}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    text = "What is 3 plus 4? The answer is 7. Reverse the letters: c a t -> t a c. Say yes. " * 20
    return Tokenizer.train(text, 290)


def answer_text(tokenizer, ids, trained):
    return tokenizer.decode([i for i, t in zip(ids, trained) if t])


@pytest.mark.parametrize("record", [ALPACA, WITH_INPUT, COMPLETION])
@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_answer_ends_with_exactly_one_trained_eot(tokenizer, record, template):
    ids, trained = encode_example(tokenizer, record, template)
    assert ids[-1] == tokenizer.eot_id and trained[-1]
    assert ids.count(tokenizer.eot_id) == 1
    output = record.get("output", record.get("completion"))
    assert answer_text(tokenizer, ids, trained) == output + EOT


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_an_eot_already_in_the_data_is_not_doubled(tokenizer, template):
    ids, trained = encode_example(tokenizer, {**ALPACA, "output": "The answer is 7." + EOT}, template)
    assert ids == encode_example(tokenizer, ALPACA, template)[0]
    assert ids.count(tokenizer.eot_id) == 1


@pytest.mark.parametrize("record", [ALPACA, WITH_INPUT, COMPLETION, CHAT])
@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_the_prompt_is_rendered_identically_for_training_and_generation(tokenizer, record, template):
    if template == "alpaca" and record is CHAT:
        with pytest.raises(ValueError, match="chat template"):
            encode_example(tokenizer, record, template)
        return
    ids, trained = encode_example(tokenizer, record, template)
    prompt = encode_prompt(tokenizer, record, template)
    assert ids[: len(prompt)] == prompt  # generation starts from exactly the training prefix
    assert trained[len(prompt)] and not trained[len(prompt) - 1]  # ... and the answer begins right after it
    assert all(trained[len(prompt):])


def test_alpaca_layout(tokenizer):
    ids, _ = encode_example(tokenizer, WITH_INPUT, "alpaca")
    assert tokenizer.decode(ids) == ("### Instruction:\nReverse the letters.\n\n### Input:\nc a t\n\n"
                                     "### Response:\nt a c" + EOT)
    no_input = tokenizer.decode(encode_prompt(tokenizer, ALPACA, "alpaca"))
    assert "### Input:" not in no_input and no_input.endswith("### Response:\n")


def test_chat_template_trains_every_assistant_turn_and_nothing_else(tokenizer):
    ids, trained = encode_example(tokenizer, CHAT, "chat")
    assert tokenizer.decode(ids) == (f"Be brief.\n\n{USER}What is 3 plus 4?{ASSISTANT}7{EOT}"
                                     f"{USER}And 5 plus 5?{ASSISTANT}10{EOT}")
    assert answer_text(tokenizer, ids, trained) == f"7{EOT}10{EOT}"
    prompt = encode_prompt(tokenizer, CHAT, "chat")
    assert tokenizer.decode(prompt).endswith(f"And 5 plus 5?{ASSISTANT}")


def test_special_token_text_inside_user_content_is_plain_text(tokenizer):
    ids, _ = encode_example(tokenizer, {"prompt": f"say {ASSISTANT}", "completion": "no"}, "chat")
    assert ids.count(tokenizer.special_id(ASSISTANT)) == 1  # only the template's own marker


def test_unknown_template(tokenizer):
    with pytest.raises(ValueError, match="unknown template"):
        encode_example(tokenizer, ALPACA, "vicuna")


def test_collate_masks_padding_by_length_even_though_pad_id_is_eot():
    eot = 9
    long = Encoded([1, 2, 3, 4, 5, eot], [False, False, True, True, True, True])
    short = Encoded([1, 2, 6, eot], [False, False, True, True])
    x, y = collate([long, short], pad_id=eot, mask_prompt=True)
    assert x.tolist() == [[1, 2, 3, 4, 5], [1, 2, 6, eot, eot]]  # padded with the eot id
    assert y.tolist() == [[IGNORE, 3, 4, 5, eot], [IGNORE, 6, eot, IGNORE, IGNORE]]
    # The short row's real end-of-text is a target (learnt), its padding is not: masked by length.
    # Masking by id would have hidden that real eot as well:
    assert (y[1] == eot).sum() == 1


def test_collate_all_tokens_keeps_prompt_targets():
    example = Encoded([1, 2, 3, 9], [False, False, True, True])
    x, y = collate([example], pad_id=9, mask_prompt=False)
    assert y.tolist() == [[2, 3, 9]]
    assert collate([example], pad_id=9, mask_prompt=True)[1].tolist() == [[IGNORE, 3, 9]]


def test_masked_prompt_tokens_do_not_change_the_loss():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=1, n_embd=8))
    a = Encoded([1, 2, 3, 4, 9], [False, False, False, True, True])
    b = Encoded([5, 6, 7, 4, 9], [False, False, False, True, True])  # other prompt, same answer position
    xa, ya = collate([a], 9)
    xb, yb = collate([b], 9)
    assert torch.equal(ya, yb)  # the targets are the answer alone
    assert lm_loss(model(xa), ya) != lm_loss(model(xb), yb)  # (the prompt still conditions the prediction)


def test_too_long_examples_are_cut_with_a_count(tokenizer, capsys):
    records = [ALPACA, {**ALPACA, "output": "word " * 50}]
    encoded = encode_records(tokenizer, records, "alpaca", max_length=50)
    assert [len(e.ids) for e in encoded] == [len(encode_example(tokenizer, ALPACA, "alpaca")[0]), 50]
    assert "1 of 2 examples were longer than 50 tokens" in capsys.readouterr().err


def test_batches_visit_every_example_once_per_epoch_and_repeat_exactly():
    examples = [Encoded([i, i, 9], [False, True, True]) for i in range(10)]
    batches = ExampleBatches(examples, batch_size=2, grad_accum=1, make_batch=lambda b: collate(b, 9, True), seed=3)
    first_epoch = sorted(int(batches.batch(step)[0][row, 0]) for step in range(5) for row in range(2))
    assert first_epoch == list(range(10))
    assert torch.equal(batches.batch(7)[0], batches.batch(7)[0])
    other_seed = ExampleBatches(examples, 2, 1, lambda b: collate(b, 9, True), seed=4)
    assert any(not torch.equal(batches.batch(s)[0], other_seed.batch(s)[0]) for s in range(5))


@pytest.fixture(scope="module", params=LAYOUTS)
def base_checkpoint(request, tmp_path_factory, tokenizer):
    """A tiny base model in GPT-2's layout and in the modern one (tiny.LAYOUTS)."""
    torch.manual_seed(0)
    model = GPT(layout_config(request.param, vocab_size=tokenizer.n_vocab, block_size=64, n_layer=1, n_head=2,
                              n_embd=16))
    return save_checkpoint(tmp_path_factory.mktemp("base") / "checkpoint", model, tokenizer, {"stage": "pretrain"})


def test_sft_learns_to_answer_and_to_stop(tmp_path, base_checkpoint):
    data = write_yes_data(tmp_path / "data")
    cfg = TrainConfig(max_steps=80, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=20, save_every=100)
    metrics = sft(base_checkpoint, data, tmp_path / "sft", cfg, quiet=True)
    assert metrics["accuracy_before"] == 0.0 and metrics["accuracy_after"] == 1.0
    scores = json.loads((tmp_path / "sft" / "scores.json").read_text())
    assert scores["after"]["families"]["facts"]["accuracy"] == 1.0
    # The judge reads the first sentence only; exact "yes" shows the model also learnt to stop.
    assert "model: 'yes'" in (tmp_path / "sft" / "samples.txt").read_text()
    assert (tmp_path / "sft" / "accuracy.png").is_file() and (tmp_path / "sft" / "checkpoint").is_dir()
