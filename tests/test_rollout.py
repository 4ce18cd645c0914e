"""Rollouts (rollout.py): sampled ids kept as sampled, padding after the first end-of-text, ended flags."""

import pytest
import torch

from gpt_scratch.data import IGNORE
from gpt_scratch.generate import generate
from gpt_scratch.logprobs import completion_logprobs
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.rollout import join_rows, prompt_ids, rollout
from gpt_scratch.tokenizer import Tokenizer

PROMPTS = ["What is 3 plus 4?", "Say yes.", "Reverse the letters.\n\nc a t", "Say no."]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train("What is 3 plus 4? The answer is 7. Say yes. Say no. Reverse the letters: c a t. " * 20, 290)


class EndsSometimes(GPT):
    """A tiny random GPT with a bonus on the end-of-text logit, so that some answers end and some do not."""

    def __init__(self, config: GPTConfig, eot_id: int, bonus: float) -> None:
        super().__init__(config)
        self.eot_id, self.bonus = eot_id, bonus

    def forward(self, idx, attention_mask=None, kv_cache=None):
        logits = super().forward(idx, attention_mask, kv_cache)
        logits[..., self.eot_id] += self.bonus
        return logits


def eot_loving_model(tokenizer, eot_bias: float) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.n_vocab, block_size=64, n_layer=1, n_head=2, n_embd=16)
    return EndsSometimes(config, tokenizer.eot_id, eot_bias)


def test_the_answer_keeps_the_sampled_ids_and_padding_follows_the_first_end_of_text(tokenizer):
    model = eot_loving_model(tokenizer, eot_bias=4.0)
    batch = rollout(model, tokenizer, PROMPTS, max_new_tokens=6, seed=3)
    sampled = generate(model, [prompt_ids(tokenizer, p) for p in PROMPTS], 6, temperature=1.0,
                       eos_id=tokenizer.eot_id, seed=3)
    assert 0 < int(batch.ended.sum()) < len(PROMPTS), "the test needs rows that end and rows that do not"
    for row, (prompt, answer) in enumerate(zip(PROMPTS, sampled)):
        prompt_length = len(prompt_ids(tokenizer, prompt))
        assert batch.examples[row].ids == prompt_ids(tokenizer, prompt) + answer
        targets = batch.y[row][batch.y[row] != IGNORE].tolist()
        assert targets == answer  # exactly the sampled answer is scored, its end-of-text included
        assert batch.ended[row] == (answer[-1] == tokenizer.eot_id)
        if batch.ended[row]:
            assert answer.count(tokenizer.eot_id) == 1  # nothing is kept after the first end-of-text
        else:
            assert len(answer) == 6 and tokenizer.eot_id not in answer
        # everything after the answer is padding: no target, pad id in the inputs
        end = prompt_length - 1 + len(answer)
        assert torch.all(batch.y[row, end:] == IGNORE)
        assert torch.all(batch.x[row, end:] == tokenizer.eot_id)
        assert batch.responses[row] == tokenizer.decode([t for t in answer if t != tokenizer.eot_id])


def test_response_mask_and_logprobs_cover_exactly_the_answer(tokenizer):
    model = eot_loving_model(tokenizer, eot_bias=4.0)
    batch = rollout(model, tokenizer, PROMPTS, max_new_tokens=6, seed=3)
    assert batch.response_mask.sum(dim=1).tolist() == [sum(e.trained) for e in batch.examples]
    with torch.no_grad():
        per_token, total = completion_logprobs(model, batch.x, batch.y)
    assert torch.all(per_token[~batch.response_mask] == 0)
    assert torch.all(per_token[batch.response_mask] < 0)
    torch.testing.assert_close(per_token.sum(dim=1), total)


def test_a_seeded_rollout_repeats_and_bad_settings_are_refused(tokenizer):
    model = eot_loving_model(tokenizer, eot_bias=0.0)
    first = rollout(model, tokenizer, PROMPTS, max_new_tokens=5, seed=7)
    again = rollout(model, tokenizer, PROMPTS, max_new_tokens=5, seed=7)
    assert torch.equal(first.x, again.x) and first.responses == again.responses
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        rollout(model, tokenizer, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="context is 64"):
        rollout(model, tokenizer, ["word " * 80], max_new_tokens=2)


def test_join_rows_keeps_each_rows_sampled_ids_and_pads_them_again(tokenizer):
    """GRPO's dynamic sampling joins rows of several rollouts: each row is exactly what was sampled, padded by
    length to the longest row of the new batch, with no target after its end-of-text."""
    model = eot_loving_model(tokenizer, eot_bias=4.0)
    first = rollout(model, tokenizer, PROMPTS, max_new_tokens=6, seed=3)
    second = rollout(model, tokenizer, PROMPTS[:2], max_new_tokens=3, seed=4)
    joined = join_rows([(first, [2, 0]), (second, [1])], pad_id=tokenizer.eot_id)
    picked = [(first, 2), (first, 0), (second, 1)]
    assert joined.prompts == [batch.prompts[i] for batch, i in picked]
    assert joined.responses == [batch.responses[i] for batch, i in picked]
    assert joined.ended.tolist() == [bool(batch.ended[i]) for batch, i in picked]
    for row, (batch, i) in enumerate(picked):
        n = len(batch.examples[i].ids) - 1  # inputs are ids[:-1], targets ids[1:]
        assert torch.equal(joined.x[row, :n], batch.x[i, :n]) and torch.equal(joined.y[row, :n], batch.y[i, :n])
        assert torch.all(joined.y[row, n:] == IGNORE) and torch.all(joined.x[row, n:] == tokenizer.eot_id)
    assert joined.response_mask.sum(dim=1).tolist() == [sum(batch.examples[i].trained) for batch, i in picked]


def test_answer_kl_is_0_against_itself_and_estimates_the_exact_kl(tokenizer):
    import copy

    from gpt_scratch.rollout import answer_kl

    policy = eot_loving_model(tokenizer, eot_bias=0.0).eval()
    assert answer_kl(policy, copy.deepcopy(policy), tokenizer, PROMPTS, max_new_tokens=5) == 0.0
    # One-token answers: the KL per answer is the KL of the first token's distributions, known exactly.
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        reference.lm_head.weight.mul_(10.0)  # sharper (the head is tied: the embedding changes too)
    ids = torch.tensor([prompt_ids(tokenizer, "Say yes.")])
    with torch.no_grad():
        logp, ref_logp = (torch.log_softmax(m(ids)[0, -1].double(), -1) for m in (policy, reference))
    exact = (logp.exp() * (logp - ref_logp)).sum().item()
    spread = (logp.exp() * (logp - ref_logp - exact) ** 2).sum().sqrt().item()
    n = 2048
    estimate = answer_kl(policy, reference, tokenizer, ["Say yes."] * n, max_new_tokens=1, seed=1, dtype="float32")
    assert exact > 0.1 and abs(estimate - exact) < 4 * spread / n ** 0.5, (estimate, exact)


def test_answer_kl_of_a_lora_policy_measures_against_its_base(tokenizer):
    import copy

    from gpt_scratch.lora import add_lora
    from gpt_scratch.rollout import answer_kl

    base = eot_loving_model(tokenizer, eot_bias=0.0).eval()
    policy = copy.deepcopy(base)
    add_lora(policy, rank=2, alpha=4.0)
    assert answer_kl(policy, None, tokenizer, PROMPTS, max_new_tokens=5) == 0.0  # B = 0: the policy is its base
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.5)
    moved = answer_kl(policy, None, tokenizer, PROMPTS, max_new_tokens=5, dtype="float32")
    assert moved != 0.0 and moved == answer_kl(policy, base, tokenizer, PROMPTS, max_new_tokens=5, dtype="float32")
