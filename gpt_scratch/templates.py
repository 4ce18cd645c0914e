"""Prompt templates: how an instruction and its answer become one sequence of token ids.

    ids, trained = encode_example(tokenizer, record, "alpaca")   # record: Alpaca, prompt/completion or chat
    prompt_ids = encode_prompt(tokenizer, record, "alpaca")      # the same prefix, for generation

Two templates. alpaca (plain text headers, works with any tokenizer, GPT-2's included):

    ### Instruction:
    What is 3 plus 4?

    ### Response:
    The answer is 7.<|endoftext|>

(with an "### Input:" section between them when the record has an input), and chat, which
marks each turn with a special token and so can hold a whole conversation:

    <|user|>What is 3 plus 4?<|assistant|>The answer is 7.<|endoftext|><|user|>And 5 plus 5?<|assistant|>...

Both render the prompt at training time exactly as at generation time: encode_prompt() is
the first part of encode_example(), token for token, which the tests check. Every answer ends
with the end-of-text token exactly once (a completion that already ends with the text
"<|endoftext|>" does not get a second one), and `trained` marks it, so the model learns to stop.
"""

from gpt_scratch.tokenizer import ASSISTANT, EOT, USER, Tokenizer

TEMPLATES = ("alpaca", "chat")


def to_messages(record: dict) -> list[dict]:
    """Any supported record -> chat messages [{"role": ..., "content": ...}, ...].

    Alpaca {"instruction", "input", "output"} and {"prompt", "completion"} become one user
    turn and one assistant turn; chat records are returned as they are.
    """
    if "messages" in record:
        return record["messages"]
    if "prompt" in record:
        return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]
    user = record["instruction"] + ("\n\n" + record["input"] if record.get("input") else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The Alpaca headers; the response follows '### Response:\\n' directly."""
    text = f"### Instruction:\n{instruction}\n\n"
    if input_text:
        text += f"### Input:\n{input_text}\n\n"
    return text + "### Response:\n"


def without_eot(text: str) -> str:
    """Drop one trailing '<|endoftext|>' written as text: the template adds the real token itself."""
    return text[: -len(EOT)] if text.endswith(EOT) else text


def alpaca_parts(record: dict) -> list[tuple[str, bool]]:
    """[(text, trained?)] of an Alpaca-template example. Chat records must be one question, one answer."""
    if "messages" in record:
        turns = [m for m in record["messages"] if m["role"] != "system"]
        if [m["role"] for m in turns] != ["user", "assistant"]:
            raise ValueError("the alpaca template holds one user turn and one assistant reply; "
                             "use the chat template for conversations")
        system = "".join(m["content"] + "\n\n" for m in record["messages"] if m["role"] == "system")
        return [(system + alpaca_prompt(turns[0]["content"]), False), (turns[1]["content"], True)]
    if "prompt" in record:
        return [(alpaca_prompt(record["prompt"]), False), (record["completion"], True)]
    return [(alpaca_prompt(record["instruction"], record.get("input", "")), False), (record["output"], True)]


def encode_example(tokenizer: Tokenizer, record: dict, template: str) -> tuple[list[int], list[bool]]:
    """Token ids of the whole example, and for each id whether it is answer (trained on) or prompt.

    Every assistant answer is followed by exactly one end-of-text id, marked as trained.
    """
    ids: list[int] = []
    trained: list[bool] = []

    def add(new_ids: list[int], is_answer: bool) -> None:
        ids.extend(new_ids)
        trained.extend([is_answer] * len(new_ids))

    if template == "alpaca":
        for text, is_answer in alpaca_parts(record):
            add(tokenizer.encode(without_eot(text) if is_answer else text), is_answer)
        add([tokenizer.eot_id], True)
    elif template == "chat":
        user, assistant = tokenizer.special_id(USER), tokenizer.special_id(ASSISTANT)
        for message in to_messages(record):
            if message["role"] == "assistant":
                add([assistant], False)
                add(tokenizer.encode(without_eot(message["content"])) + [tokenizer.eot_id], True)
            elif message["role"] == "user":
                add([user] + tokenizer.encode(message["content"]), False)
            else:  # system: plain text before the first turn
                add(tokenizer.encode(message["content"] + "\n\n"), False)
    else:
        raise ValueError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
    return ids, trained


def encode_prompt(tokenizer: Tokenizer, record: dict, template: str) -> list[int]:
    """The ids a model sees before it writes the (last) answer: what generation starts from."""
    ids, trained = encode_example(tokenizer, record, template)
    # The prompt ends where the last answer begins: after the last prompt token.
    last_prompt = max(i for i, is_answer in enumerate(trained) if not is_answer)
    return ids[: last_prompt + 1]
