"""`python -m gpt_scratch serve`: the JSON API behind the chat page, over a real server on a free port.

The run folder holds a pretrained (untrained, so it babbles) model, an SFT model taught to answer
'Is N a number?' with 'yes', and a reward model (which the server must leave out). Each test talks
HTTP to uvicorn running in a thread of this process, so that a test can swap the token source
(serve.answer_pieces) to hold a generation still or make it endless. The last test opens the page
in headless Chromium (Debian's package, driven by playwright); it is skipped where either is missing.
"""

import http.client
import importlib.util
import json
import logging
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
import uvicorn

import gpt_scratch.serve as serve
from gpt_scratch.chat import encode_conversation, encode_question, fit_conversation
from gpt_scratch.checkpoint import load_checkpoint, save_checkpoint
from gpt_scratch.cli import main
from gpt_scratch.generate import generate
from gpt_scratch.heads import GPTWithHead
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.serve import MAX_BODY_BYTES, MAX_MESSAGE_CHARS, build_app, build_prompt, load_models, \
    load_world_questions, open_socket, parse_chat_request
from gpt_scratch.serve_load import chat_events, load_test
from gpt_scratch.sft import sft
from gpt_scratch.tokenizer import Tokenizer
from gpt_scratch.train import TrainConfig
from tiny import write_yes_data

BLOCK = 64
HELD_OUT = "Is 40 a number?"  # in the test split only


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A run folder as the main job writes one: data/, pretrain/, sft/ and reward/ (a few seconds)."""
    run = tmp_path_factory.mktemp("run")
    tokenizer = Tokenizer.train("Is 3 a number? yes. Is 12 a number? yes. Reverse the letters. " * 20, 280)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.n_vocab, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16)
    base = save_checkpoint(run / "pretrain" / "checkpoint", GPT(config), tokenizer, {"stage": "pretrain"})
    data = write_yes_data(run / "data", n_train=32, n_test=4)
    held_out = [{"id": f"test-{i}", "family": "facts", "level": 1, "instruction": f"Is {i} a number?", "input": "",
                 "output": "yes", "answer": "yes", "unseen": True} for i in range(40, 44)]
    (data / "sft_test.json").write_text(json.dumps(held_out))
    cfg = TrainConfig(max_steps=60, batch_size=8, lr=1e-2, warmup_steps=2, eval_every=100, save_every=100)
    sft(base, data, run / "sft", cfg, quiet=True, score_before=False)
    save_checkpoint(run / "reward" / "checkpoint", GPTWithHead(GPT(config)), tokenizer, {"stage": "reward"})
    return run


class Server:
    """uvicorn serving build_app(...) in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app):
        self.sock = open_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started, "the server did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def models(run_folder):
    return load_models(run_folder, [], "cpu")


@pytest.fixture(scope="module")
def server(run_folder, models):
    with Server(build_app(models, load_world_questions(run_folder / "data"))) as running:
        yield running


def request(url: str, method: str, path: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, dict]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request(method, path, body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def ask(url: str, model: str, messages: list[dict], **settings) -> list[dict]:
    """Every event of one answer."""
    return list(chat_events(url, {"model": model, "messages": messages, **settings}))


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def turn(question: str, answer: str) -> list[dict]:
    return [user(question), {"role": "assistant", "content": answer}]


def greedy_answer(folder: Path, history: list[dict], question: str, max_new_tokens: int, temperature: float = 0.0,
                  seed: int | None = None) -> str:
    """What the model answers in the chat template (greedy, or sampled with this seed), computed without the server."""
    model, tokenizer, _ = load_checkpoint(folder)
    ids = generate(model, [encode_conversation(tokenizer, history, question)], max_new_tokens, temperature=temperature,
                   eos_id=tokenizer.eot_id, seed=seed)[0]
    return tokenizer.decode([i for i in ids if i != tokenizer.eot_id])


# --- the models and the answers --------------------------------------------------------------------------

def test_the_models_are_the_run_stages_without_the_reward_model(server):
    status, info = request(server.url, "GET", "/api/models")
    assert status == 200
    assert [m["name"] for m in info["models"]] == ["pretrain", "sft"]  # the main job's order; reward left out
    assert [m["template"] for m in info["models"]] == ["chat", "chat"]
    assert info["models"][0]["block_size"] == BLOCK and info["models"][0]["parameters"] > 0
    assert info["judge"] is True and info["defaults"]["temperature"] == 0


def test_an_answer_streams_piece_by_piece_and_is_the_models_greedy_answer(server, run_folder):
    events = ask(server.url, "pretrain", [user("Reverse the letters.")], max_new_tokens=8)
    assert [e["type"] for e in events][0] == "start" and events[-1]["type"] == "end"
    pieces = [e["text"] for e in events if e["type"] == "token"]
    assert len(pieces) > 1  # several events, one per piece of text as it was sampled
    expected = greedy_answer(run_folder / "pretrain", [], "Reverse the letters.", 8)
    assert "".join(pieces) == events[-1]["answer"] == expected
    assert events[-1]["judge"] is None  # not one of the world's questions


def test_a_world_question_gets_the_judges_verdict(server):
    right = ask(server.url, "sft", [user(HELD_OUT)])[-1]
    assert right["answer"] == "yes"
    assert right["judge"] == {"correct": True, "expected": "yes", "family": "facts", "style": "bare", "held_out": True}
    wrong = ask(server.url, "pretrain", [user("is 40   a number?")])[-1]  # matched whatever its spacing and case
    assert wrong["judge"]["correct"] is False and wrong["judge"]["expected"] == "yes"
    seen = ask(server.url, "sft", [user("Is 5 a number?")])[-1]
    assert seen["judge"]["held_out"] is False  # a training question


def test_the_example_is_a_held_out_question(server):
    status, example = request(server.url, "GET", "/api/example")
    assert status == 200 and example["question"] in {f"Is {i} a number?" for i in range(40, 44)}


def test_the_page_is_served(server):
    with urllib.request.urlopen(server.url + "/") as response:
        page = response.read().decode()
    assert response.headers["content-type"].startswith("text/html") and "/api/chat" in page


def test_a_conversation_keeps_its_turns_and_drops_the_oldest_when_full(server, run_folder, models):
    history = turn("Is 1 a number?", "yes") + turn("Is 2 a number?", "yes")
    events = ask(server.url, "sft", history + [user("Is 3 a number?")], max_new_tokens=8)
    assert events[0]["dropped_turns"] == 0
    assert events[0]["prompt_tokens"] == len(encode_conversation(models["sft"].tokenizer, history, "Is 3 a number?"))
    long_history = turn("Is 1 a number? " * 3, "yes") + turn("Is 2 a number? " * 3, "yes") + turn("Is 7?", "yes")
    tokenizer = models["sft"].tokenizer
    kept, ids = fit_conversation(tokenizer, long_history, "Is 3 a number?", BLOCK - 24)
    assert 0 < len(kept) < len(long_history)  # the test's conversation does outgrow the context
    events = ask(server.url, "sft", long_history + [user("Is 3 a number?")], max_new_tokens=24)
    assert events[0]["dropped_turns"] == (len(long_history) - len(kept)) // 2
    assert events[0]["prompt_tokens"] == len(ids)
    assert events[-1]["answer"] == greedy_answer(run_folder / "sft", kept, "Is 3 a number?", 24)


def test_an_alpaca_model_gets_the_last_question_alone(models):
    alpaca = serve.ChatModel(**{**vars(models["sft"]), "template": "alpaca"})
    body = {"model": "sft", "messages": turn("Is 1 a number?", "yes") + [user("Is 3 a number?")], "max_new_tokens": 8}
    parsed = parse_chat_request(json.dumps(body).encode(), {"sft": alpaca})
    prompt, dropped = build_prompt(parsed)
    assert prompt == encode_question(alpaca.tokenizer, "Is 3 a number?", "alpaca") and dropped == 1


# --- bad input: a 4xx with one line, logged, and the server goes on ---------------------------------------

def chat_body(**fields) -> bytes:
    body = {"model": "sft", "messages": [user("Is 3 a number?")], **fields}
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


BAD_REQUESTS = {
    "malformed JSON": ("POST", "/api/chat", b'{"model": "sft", ', 400, "not valid JSON"),
    "not an object": ("POST", "/api/chat", b"[1, 2]", 400, "must be a JSON object"),
    "unknown field": ("POST", "/api/chat", chat_body(temp=1), 400, 'unknown field "temp"'),
    "unknown model": ("POST", "/api/chat", chat_body(model="gpt5"), 404, 'unknown model "gpt5"; the models are '
                                                                          "pretrain, sft"),
    "no messages": ("POST", "/api/chat", chat_body(messages=...), 400, "messages must be a non-empty list"),
    "empty question": ("POST", "/api/chat", chat_body(messages=[user("  \n ")]), 400, "the question is empty"),
    "over-long message": ("POST", "/api/chat", chat_body(messages=[user("a" * (MAX_MESSAGE_CHARS + 1))]), 400,
                          f"at most {MAX_MESSAGE_CHARS}"),
    "question longer than the context": ("POST", "/api/chat", chat_body(messages=[user("Is 3 a number? " * 20)]),
                                         400, "ask something shorter"),
    "turns out of order": ("POST", "/api/chat", chat_body(messages=[user("hi"), user("hi")]), 400,
                           'messages[1] has role "user"'),
    "ends with the answer": ("POST", "/api/chat", chat_body(messages=turn("hi", "yes")), 400,
                             "the last message must be the user's"),
    "negative temperature": ("POST", "/api/chat", chat_body(temperature=-1), 400, "temperature must be from 0"),
    "temperature as text": ("POST", "/api/chat", chat_body(temperature="hot"), 400, "temperature must be a number"),
    "top_k 0": ("POST", "/api/chat", chat_body(temperature=1, top_k=0), 400, "top_k must be from 1"),
    "top_p 0": ("POST", "/api/chat", chat_body(temperature=1, top_p=0), 400, "top_p must be from 0.0 to 1.0 (above 0)"),
    "top_p 1.5": ("POST", "/api/chat", chat_body(temperature=1, top_p=1.5), 400, "top_p must be from"),
    "top_k when greedy": ("POST", "/api/chat", chat_body(top_k=5), 400, "top_k has no effect with temperature 0"),
    "max_new_tokens 0": ("POST", "/api/chat", chat_body(max_new_tokens=0), 400, "max_new_tokens must be from 1"),
    "max_new_tokens beyond the context": ("POST", "/api/chat", chat_body(max_new_tokens=BLOCK - 2), 400,
                                          f"use at most {BLOCK - 3}"),
    "max_new_tokens true": ("POST", "/api/chat", chat_body(max_new_tokens=True), 400, "must be a whole number"),
    "seed -1": ("POST", "/api/chat", chat_body(seed=-1), 400, "seed must be from 0"),
    "body too large": ("POST", "/api/chat", b" " * (MAX_BODY_BYTES + 1), 413, f"over {MAX_BODY_BYTES} bytes"),
    "wrong method": ("GET", "/api/chat", None, 405, "Method Not Allowed: GET /api/chat"),
    "no such page": ("GET", "/api/nothing", None, 404, "Not Found: GET /api/nothing"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_input_gets_a_4xx_with_one_line_and_is_logged(server, caplog, case):
    method, path, body, status, message = BAD_REQUESTS[case]
    with caplog.at_level(logging.WARNING, logger="gpt_scratch.serve"):
        got_status, answer = request(server.url, method, path, body)
    assert got_status == status
    assert list(answer) == ["error"] and message in answer["error"] and "\n" not in answer["error"]
    assert any(answer["error"] in record.getMessage() for record in caplog.records)  # logged too
    assert ask(server.url, "sft", [user(HELD_OUT)])[-1]["answer"] == "yes"  # and the server goes on


# --- concurrency: nothing waits for a generation ----------------------------------------------------------

def test_a_generation_does_not_block_other_requests(server, monkeypatch):
    release, threads, real_pieces = threading.Event(), [], serve.answer_pieces

    def held_still(*args):  # the first generation: one piece, then wait until the test lets it go on
        if threads:
            yield from real_pieces(*args)
            return
        threads.append(threading.current_thread())
        yield "a"
        release.wait(timeout=30)
        yield "b"

    monkeypatch.setattr(serve, "answer_pieces", held_still)
    events = chat_events(server.url, {"model": "sft", "messages": [user("hi")]})
    assert next(events)["type"] == "start" and next(events) == {"type": "token", "text": "a"}
    try:
        status, info = request(server.url, "GET", "/api/models", timeout=10)  # answered while the generation waits
        assert status == 200 and len(info["models"]) == 2
        assert ask(server.url, "pretrain", [user("hi")], max_new_tokens=2)[-1]["type"] == "end"  # so is a chat
    finally:
        release.set()
    assert [e.get("text") for e in events][:1] == ["b"]
    assert threads[0] is not threading.main_thread() and threads[0].name != server.thread.name  # a worker thread


def test_a_client_that_leaves_stops_its_generation(server, monkeypatch, caplog):
    produced, closed = [], threading.Event()

    def endless(*args):
        try:
            while True:
                produced.append(1)
                time.sleep(0.01)
                yield "x"
        finally:
            closed.set()

    monkeypatch.setattr(serve, "answer_pieces", endless)
    with caplog.at_level(logging.WARNING, logger="gpt_scratch.serve"):
        events = chat_events(server.url, {"model": "sft", "messages": [user("hi")]})
        for _ in range(4):  # start and three pieces, then the client leaves
            next(events)
        events.close()
        assert closed.wait(timeout=10), "the generation went on after the client left"
        count = len(produced)
        time.sleep(0.2)
        assert len(produced) == count < 100  # nothing more was generated
    assert any("the client left" in record.getMessage() for record in caplog.records)


def test_clients_at_once_each_get_their_own_conversation(server, run_folder):
    conversations = [turn(f"Is {i} a number?", "yes") + [user(f"Reverse {i} letters.")] for i in range(6)]
    answers: dict[int, str] = {}

    def client(i: int) -> None:  # sampled, each with its own seed: the answers differ
        events = ask(server.url, "pretrain", conversations[i], max_new_tokens=6, temperature=1.0, seed=10 * i)
        answers[i] = events[-1]["answer"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for i, conversation in enumerate(conversations):  # a turn's seed is the seed plus the turns before it (one)
        assert answers[i] == greedy_answer(run_folder / "pretrain", conversation[:-1], conversation[-1]["content"], 6,
                                           temperature=1.0, seed=10 * i + 1)
    assert len(set(answers.values())) > 1


def test_several_clients_for_a_while_are_all_answered(server):
    summary = load_test(server.url, ["pretrain", "sft"], ["Is 3 a number?", "Reverse the letters."], clients=6,
                        seconds=2, max_new_tokens=8)
    assert summary["requests"] >= 6 and summary["answered"] == summary["requests"] and summary["failed"] == 0
    assert 0 < summary["ttft_median_s"] <= summary["ttft_p95_s"]


# --- the command ------------------------------------------------------------------------------------------

def run_main(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main(["serve", *map(str, argv)])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_help_names_every_flag(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    for flag in ("--run", "--checkpoint", "--data", "--host", "--port", "--device"):
        assert flag in out
    assert "default: 127.0.0.1" in out


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "argument --port: must be from 0 to 65535"),
    (["--port", "http"], "argument --port: expected a whole number"),
    (["--device", "tpu"], "argument --device: invalid choice"),
    (["--run", "no/such/run"], "run folder no/such/run not found"),
    (["--data", "no/such/data"], "no/such/data holds no sft_test.json"),
])
def test_a_bad_flag_is_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_run_without_models_and_a_port_in_use_are_one_line(capsys, tmp_path, run_folder):
    code, _, err = run_main(capsys, "--run", tmp_path, "--port", 0)
    assert code == 2 and f"{tmp_path} holds no stage folder with a checkpoint" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        code, _, err = run_main(capsys, "--run", run_folder, "--port", taken.getsockname()[1])
    assert code == 2 and "cannot listen on 127.0.0.1 port" in err and len(err.strip().splitlines()) == 1


def test_the_command_serves_the_run_on_localhost(run_folder, capsys):
    """serve_load runs `python -m gpt_scratch serve --run RUN --port 0` as a process of its own."""
    from gpt_scratch import serve_load

    assert serve_load.main(["--run", str(run_folder), "--clients", "3", "--seconds", "2"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.splitlines()[-1])
    assert summary["answered"] == summary["requests"] > 0 and "time to first token: median" in out
    assert "of the server at http://127.0.0.1:" in out  # localhost, as no --host was given


# --- the page in a real browser: Debian's Chromium, headless, driven by Playwright --------------------------

CHROMIUM = shutil.which("chromium")  # .ci/run installs it where missing (apt-get install chromium)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def browser_missing() -> str | None:
    if CHROMIUM is None:
        return "no chromium here (Debian: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing (pip install -r requirements.txt)"
    return None


@pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")
def test_the_page_asks_two_models_and_streams_both_answers(server, run_folder, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:  # Debian's Chromium, never a downloaded one; a fresh profile
        browser = playwright.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                                headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(server.url)
            page.wait_for_selector("#models[data-ready=yes]", timeout=30_000)
            assert page.locator("section.column").count() == 2  # both models ticked, one column each
            page.fill("#question", HELD_OUT)
            page.press("#question", "Enter")
            page.wait_for_function("document.querySelectorAll('.assistant[data-state=done]').length === 2",
                                   timeout=60_000)
            column = {name: page.locator(f"section[data-model={name}] .assistant") for name in ("pretrain", "sft")}
            for answer in column.values():
                assert int(answer.get_attribute("data-chunks")) > 1  # it came piece by piece
            assert column["sft"].locator(".text").text_content() == "yes"
            assert column["sft"].locator(".verdict").text_content().startswith("\u2713 correct")
            expected = greedy_answer(run_folder / "pretrain", [], HELD_OUT, 32)
            assert column["pretrain"].locator(".text").text_content() == expected
            assert column["pretrain"].locator(".verdict").text_content().startswith("\u2717 wrong, expected: yes")
        finally:
            browser.close()
