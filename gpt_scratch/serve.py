"""Chat with every model of a run in the browser, side by side: a local web server and its JSON API.

    python -m gpt_scratch serve --run runs/default        # then open the address it prints
    python -m gpt_scratch serve --checkpoint my/sft --checkpoint my/dpo --port 8080

The page (static/chat.html) lists the models: every stage folder of the run that holds a checkpoint
(pretrain, sft, lora, ppo, dpo, grpo; the reward model scores answers and does not write them, so
it is left out) and any --checkpoint. A question goes to every model ticked on the page, and each
answer streams into its own column token by token; each column is its own multi-turn chat. When
the question is one of the world's tasks (the run's data/ folder), the judge's verdict and the
expected answer appear under each answer.

The JSON API, which the page uses and scripts can call:
    GET  /api/models    the models, their stage, template and context, and the sampling settings' limits
    GET  /api/example   a random held-out question of the world (404 without a data folder)
    POST /api/chat      {"model": "sft", "messages": [{"role": "user", "content": "What is 3 plus 4?"}],
                         "temperature": 0, "top_k": null, "top_p": null, "max_new_tokens": 32, "seed": 0}
                        streams the answer as JSON lines (NDJSON), one event per line:
                        {"type": "start", "dropped_turns": 0, "prompt_tokens": 11}
                        {"type": "token", "text": "The"} ... (the answer, piece by piece)
                        {"type": "end", "answer": "The answer is 7.", "seconds": 0.05, "judge": {...} or null}
    Only "model" and "messages" are required (alternating user/assistant turns, ending with the user's).
    Bad input gets a 4xx status and {"error": "one line"}.

How it works:
1. The server is Starlette (the small ASGI toolkit that FastAPI is built on) run by uvicorn: both
   widely used, and a streamed response is an async generator, so one Python process serves many
   browsers at once. The conversation lives in the page, not the server: every request carries it,
   so two browsers never share a conversation and a restart loses nothing.
2. Every model is loaded once, at start, and shared. Generating a token is torch work, so it runs in
   a worker thread (torch releases the GIL in its kernels) while the event loop goes on answering
   other requests. A model stays in eval mode, and each generation keeps its own KV cache and random
   generator (generate.py), so threads share a model without a lock.
3. The prompt is built as `chat` builds it (chat.py): the conversation in the model's template; the
   oldest turns dropped when it does not fit the context beside max_new_tokens (the page says so).
4. The answer is pulled from the model one piece at a time. When the client leaves, the next write
   fails, nothing pulls the next token, and the generation stops there.
"""

import argparse
import json
import logging
import random
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import uvicorn
from anyio import CapacityLimiter, to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from gpt_scratch.args import OneLineParser, int_range, print_error
from gpt_scratch.chat import (answer_pieces, choose_template, encode_conversation, encode_question, fit_conversation,
                              has_chat_tokens)
from gpt_scratch.checkpoint import load_stage_checkpoint
from gpt_scratch.evaluate import load_split
from gpt_scratch.hardware import check_device, pick_device
from gpt_scratch.model import GPT
from gpt_scratch.settings import add_flags, from_flags, setting
from gpt_scratch.templates import to_messages
from gpt_scratch.tokenizer import Tokenizer
from gpt_scratch.train import RunSettings
from gpt_scratch.world.judge import is_correct, style_of

PAGE = Path(__file__).parent / "static" / "chat.html"
STAGE_ORDER = ("pretrain", "sft", "lora", "ppo", "dpo", "grpo")  # the order of the main job's stages
STAGE_NOTES = {"pretrain": "the base model: pretrained on text, never taught to answer",
               "sft": "instruction fine-tuned (chapter 5)", "lora": "fine-tuned with LoRA (chapter 7)",
               "ppo": "RLHF with PPO (chapter 9)", "dpo": "direct preference optimisation (chapter 10)",
               "grpo": "RL with the judge as the reward, GRPO (chapter 11)"}
MAX_BODY_BYTES = 64_000  # a request body, the whole conversation included
MAX_MESSAGE_CHARS = 4_000  # one message
MAX_TURNS = 200  # messages in one conversation
LIMITS = {"temperature": (0.0, 100.0), "top_k": (1, 100_000), "top_p": (0.0, 1.0), "max_new_tokens": (1, 8192),
          "seed": (0, 2**63 - 1)}  # as the chat command's flags; top_p excludes 0
DEFAULTS = {"temperature": 0.0, "top_k": None, "top_p": None, "max_new_tokens": 32, "seed": 0}

log = logging.getLogger("gpt_scratch.serve")


class BadRequest(Exception):
    """Bad input from a client: answered with `status` and {"error": message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class ChatModel:
    name: str  # what the page and the API call it: the stage folder's name
    folder: Path
    model: GPT  # in eval mode
    tokenizer: Tokenizer
    template: str  # "chat" or "alpaca": the one it was fine-tuned with
    stage: str
    note: str

    def describe(self) -> dict:
        return {"name": self.name, "stage": self.stage, "note": self.note, "template": self.template,
                "parameters": self.model.num_parameters(), "block_size": self.model.config.block_size,
                "max_new_tokens": self.model.config.block_size - 3}  # <|user|>, one token, <|assistant|>


# --- the models and the world's questions, loaded once ----------------------------------------------------

def has_head(checkpoint: Path) -> bool:
    """Does the checkpoint carry a scalar head (checkpoint.py), as the reward model does?"""
    try:
        return "head" in json.loads((checkpoint / "config.json").read_text())
    except ValueError:
        return False  # a damaged config.json: loading it says what is wrong


def stage_folders(run: Path) -> list[Path]:
    """The run's stage folders that hold a chat model's checkpoint, in the main job's order.

    A checkpoint with a scalar head (the reward model) is left out: it scores answers, it does not write them.
    """
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} not found; run `python -m gpt_scratch run` first, or give "
                                f"--run DIR (a run folder) or --checkpoint DIR")
    found = [folder for folder in run.iterdir() if (folder / "checkpoint" / "config.json").is_file()
             and not has_head(folder / "checkpoint")]
    rank = {name: i for i, name in enumerate(STAGE_ORDER)}
    return sorted(found, key=lambda folder: (rank.get(folder.name, len(rank)), folder.name))


def model_name(folder: Path, taken: set[str]) -> str:
    """The stage folder's name (a checkpoint/ folder is named after the folder holding it), made unique."""
    folder = folder.resolve()
    base = folder.parent.name if folder.name == "checkpoint" else folder.name
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def load_chat_model(folder: Path, name: str, device) -> ChatModel:
    model, tokenizer, meta = load_stage_checkpoint(folder, device)
    model.eval()  # and it stays so: generation's model.train(was_training) then leaves it in eval mode
    # the template it was fine-tuned with; a base model (pretrain records none): chat where it has the tokens
    template, _ = choose_template(folder, meta, None, "chat" if has_chat_tokens(tokenizer) else "alpaca")
    stage = meta.get("stage", "unknown")
    return ChatModel(name, folder, model, tokenizer, template, stage,
                     STAGE_NOTES.get(name, STAGE_NOTES.get(stage, f"a {stage} checkpoint")))


def load_models(run: Path | None, checkpoints: list[Path], device) -> dict[str, ChatModel]:
    """Every model to serve, by name: the run's stage models, then the checkpoints given one by one."""
    folders = (stage_folders(run) if run is not None else []) + list(checkpoints)
    if not folders:
        raise FileNotFoundError(f"{run} holds no stage folder with a checkpoint; run `python -m gpt_scratch run` "
                                f"first, or give --checkpoint DIR")
    models: dict[str, ChatModel] = {}
    for folder in folders:
        name = model_name(folder, set(models))
        models[name] = load_chat_model(folder, name, device)
    return models


def question_key(text: str) -> str:
    """Questions match whatever their spacing: question_key(' What is  3 plus 4?\\n') -> 'what is 3 plus 4?'"""
    return " ".join(text.split()).lower()


def load_world_questions(data_dir: Path | None) -> dict[str, tuple[dict, bool]]:
    """The world's questions (sft_train/val/test.json of a data folder) by question_key: (record, held out?).

    A question is held out when training never saw it (it is not in sft_train.json).
    """
    questions: dict[str, tuple[dict, bool]] = {}
    if data_dir is None:
        return questions
    trained = set()
    for split in ("train", "val", "test"):
        if not (data_dir / f"sft_{split}.json").is_file():
            continue
        for record in load_split(data_dir, split):
            if "family" not in record or "answer" not in record:
                continue  # not a task the judge knows
            key = question_key(to_messages(record)[0]["content"])
            if split == "train":
                trained.add(key)
            questions[key] = (record, key not in trained)
    return questions


def verdict(questions: dict[str, tuple[dict, bool]], question: str, answer: str) -> dict | None:
    """The judge's verdict on an answer to one of the world's questions; None for any other question."""
    found = questions.get(question_key(question))
    if found is None:
        return None
    record, held_out = found
    return {"correct": is_correct(record, answer), "expected": record["answer"], "family": record["family"],
            "style": style_of(answer), "held_out": held_out}


# --- one chat request: checked, then its prompt built ----------------------------------------------------

@dataclass
class ChatRequest:
    model: ChatModel
    history: list[dict]  # the conversation before the question: user, assistant, user, assistant, ...
    question: str
    temperature: float
    top_k: int | None
    top_p: float | None
    max_new_tokens: int
    seed: int


def request_setting(body: dict, name: str, kind: type):
    """A sampling setting of the request, checked against LIMITS; its default when absent or null."""
    value = body.get(name)
    if value is None:
        return DEFAULTS[name]
    low, high = LIMITS[name]
    # bool is a subclass of int in Python, but true is no number of tokens
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise BadRequest(400, f"{name} must be {'a number' if kind is float else 'a whole number'}, got "
                              f"{json.dumps(value)}")
    too_low = value <= low if name == "top_p" else value < low
    if too_low or value > high:
        raise BadRequest(400, f"{name} must be from {low} to {high}{' (above 0)' if name == 'top_p' else ''}, "
                              f"got {value}")
    return kind(value)


def check_messages(messages) -> tuple[list[dict], str]:
    """(history, question) of a conversation: user and assistant turns in turn, ending with the user's."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest(400, 'messages must be a non-empty list of {"role": ..., "content": ...}')
    if len(messages) > MAX_TURNS:
        raise BadRequest(400, f"messages holds {len(messages)} turns; at most {MAX_TURNS}")
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise BadRequest(400, f'messages[{i}] must be {{"role": ..., "content": ...}}')
        if message["role"] != expected:
            raise BadRequest(400, f"messages[{i}] has role {json.dumps(message['role'])}; the turns go user, "
                                  f"assistant, user, ..., so this one is {expected}")
        if not isinstance(message["content"], str):
            raise BadRequest(400, f"messages[{i}].content must be a string")
        if len(message["content"]) > MAX_MESSAGE_CHARS:
            raise BadRequest(400, f"messages[{i}] has {len(message['content'])} characters; at most "
                                  f"{MAX_MESSAGE_CHARS}")
    if len(messages) % 2 == 0:
        raise BadRequest(400, "the last message must be the user's question")
    question = messages[-1]["content"].strip()
    if not question:
        raise BadRequest(400, "the question is empty; ask something")
    return messages[:-1], question


def parse_chat_request(raw: bytes, models: dict[str, ChatModel]) -> ChatRequest:
    """The request body -> a checked ChatRequest, or BadRequest naming the first problem."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(400, f"the body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise BadRequest(400, 'the body must be a JSON object: {"model": ..., "messages": [...]}')
    unknown = sorted(set(body) - {"model", "messages", *DEFAULTS})
    if unknown:
        raise BadRequest(400, f"unknown field {json.dumps(unknown[0])}; the fields are model, messages, "
                              f"{', '.join(DEFAULTS)}")
    name = body.get("model")
    if name not in models:
        raise BadRequest(404, f"unknown model {json.dumps(name)}; the models are {', '.join(models)}")
    history, question = check_messages(body.get("messages"))
    request = ChatRequest(models[name], history, question, request_setting(body, "temperature", float),
                          request_setting(body, "top_k", int), request_setting(body, "top_p", float),
                          request_setting(body, "max_new_tokens", int), request_setting(body, "seed", int))
    if request.temperature == 0:  # as the command line: a setting that would be silently ignored is refused
        ignored = next((n for n in ("top_k", "top_p") if getattr(request, n) is not None), None)
        if ignored:
            raise BadRequest(400, f"{ignored} has no effect with temperature 0 (greedy); give temperature > 0 "
                                  f"to sample")
    most = models[name].model.config.block_size - 3
    if request.max_new_tokens > most:
        raise BadRequest(400, f"max_new_tokens {request.max_new_tokens} leaves no room for a question in "
                              f"{name}'s context of {most + 3} tokens; use at most {most}")
    return request


def build_prompt(request: ChatRequest) -> tuple[list[int], int]:
    """(prompt ids, turns dropped): the conversation in the model's template, as much of it as fits.

    The alpaca template holds one question, so a conversation keeps only its last question there.
    """
    chat_model = request.model
    tokenizer, block_size = chat_model.tokenizer, chat_model.model.config.block_size
    budget = block_size - request.max_new_tokens
    if chat_model.template == "chat":
        kept, prompt = fit_conversation(tokenizer, request.history, request.question, budget) or ([], None)
        alone = prompt or encode_conversation(tokenizer, [], request.question)
    else:
        kept, prompt = [], encode_question(tokenizer, request.question, chat_model.template)
        alone = prompt
    if len(alone) > budget:
        raise BadRequest(400, f"the question is {len(alone)} tokens, but {chat_model.name}'s context of "
                              f"{block_size} holds {budget} besides the answer's {request.max_new_tokens}: ask "
                              f"something shorter, or lower max_new_tokens")
    return prompt, (len(request.history) - len(kept)) // 2


# --- the web application -----------------------------------------------------------------------------------

def json_line(event: dict) -> bytes:
    return (json.dumps(event) + "\n").encode("utf-8")


async def answer_events(request: ChatRequest, prompt: list[int], dropped: int,
                        questions: dict[str, tuple[dict, bool]], limiter: CapacityLimiter) -> AsyncIterator[bytes]:
    """The answer's events as JSON lines: start, a token event per piece of text, end (with the verdict)."""
    chat_model = request.model
    seed = request.seed + len(request.history) // 2  # as `chat`: each turn its own seed, repeatable
    yield json_line({"type": "start", "model": chat_model.name, "dropped_turns": dropped, "prompt_tokens": len(prompt)})
    pieces = answer_pieces(chat_model.model, chat_model.tokenizer, prompt, request.max_new_tokens,
                           request.temperature, request.top_k, request.top_p, seed if request.temperature else None)
    began, answer, finished = time.perf_counter(), "", False
    try:
        # One piece per trip to a worker thread: the event loop stays free between tokens.
        while (piece := await to_thread.run_sync(next, pieces, None, limiter=limiter)) is not None:
            answer += piece
            yield json_line({"type": "token", "text": piece})
        finished = True
        yield json_line({"type": "end", "answer": answer, "seconds": round(time.perf_counter() - began, 3),
                         "judge": verdict(questions, request.question, answer)})
    except Exception as err:  # a bug must not take the server down: this stream says so and ends
        finished = True
        log.exception("%s: generation failed", chat_model.name)
        yield json_line({"type": "error", "error": f"generation failed ({type(err).__name__}: {err})"})
    finally:
        pieces.close()
        if not finished:
            log.warning("%s: the client left after %d characters of the answer; generation stopped",
                        chat_model.name, len(answer))


def build_app(models: dict[str, ChatModel], questions: dict[str, tuple[dict, bool]] | None = None,
              generation_threads: int = 4) -> Starlette:
    """The Starlette application: the page and the JSON API over these models."""
    questions = questions or {}
    held_out = [record for record, is_held_out in questions.values() if is_held_out]
    limiter = CapacityLimiter(generation_threads)  # threads generating at once; the other streams wait their turn

    def refuse(request: Request, status: int, message: str) -> JSONResponse:
        log.warning("%s %s -> %d: %s", request.method, request.url.path, status, message)
        return JSONResponse({"error": message}, status_code=status)

    async def page(request: Request):
        return FileResponse(PAGE, media_type="text/html")

    async def list_models(request: Request):
        return JSONResponse({"models": [m.describe() for m in models.values()], "defaults": DEFAULTS,
                             "limits": LIMITS, "judge": bool(questions)})

    async def example(request: Request):
        if not held_out:
            raise BadRequest(404, "no data folder with the world's held-out questions; give --data DIR")
        record = random.choice(held_out)
        return JSONResponse({"question": to_messages(record)[0]["content"], "family": record["family"]})

    async def chat(request: Request):
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise BadRequest(413, f"the request body is over {MAX_BODY_BYTES} bytes; send a shorter conversation")
        parsed = parse_chat_request(raw, models)
        prompt, dropped = await to_thread.run_sync(build_prompt, parsed, limiter=limiter)  # tokenizing is work too
        return StreamingResponse(answer_events(parsed, prompt, dropped, questions, limiter),
                                 media_type="application/x-ndjson")

    async def bad_request(request: Request, err: BadRequest):
        return refuse(request, err.status, err.message)

    async def http_error(request: Request, err: HTTPException):  # 404 no such page, 405 wrong method
        return refuse(request, err.status_code, f"{err.detail}: {request.method} {request.url.path}; the API is "
                                                f"GET /api/models, GET /api/example, POST /api/chat")

    routes = [Route("/", page), Route("/api/models", list_models), Route("/api/example", example),
              Route("/api/chat", chat, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={BadRequest: bad_request, HTTPException: http_error})


# --- the command -----------------------------------------------------------------------------------------

@dataclass
class ServeOptions:
    run: Path | None = setting(None, "run folder: every stage folder in it with a checkpoint is served (default "
                                     "runs/default, unless --checkpoint is given)", type=Path, metavar="DIR",
                               preset=False)
    checkpoint: list[Path] = setting([], "also serve this checkpoint or stage folder (repeat it for several)",
                                     type=Path, metavar="DIR", repeat=True, preset=False)
    data: Path | None = setting(None, "the world's data folder, for the judge's verdicts and the example questions "
                                      "(default: the run's data/)", type=Path, metavar="DIR", preset=False)
    host: str = setting("127.0.0.1", "address to listen on (127.0.0.1: this machine only; 0.0.0.0 opens it to the "
                                     "network)", preset=False)
    port: int = setting(8000, "port to listen on (0 picks a free one)", type=int_range(0, 65535), preset=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("A local web page to chat with the models of a run: ask one question of several and read "
                          "their answers side by side, streamed as they are written. Open the address it prints; "
                          "scripts can call its JSON API (GET /api/models, POST /api/chat: see the README).")
    add_flags(parser, ServeOptions)
    add_flags(parser, RunSettings, only=("device",))


def open_socket(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a port in use is one clear line, and port 0 a known free port."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as err:
        raise ValueError(f"cannot listen on {host} port {port} ({err.strerror or err}); give another --port "
                         f"(0 picks a free one) or --host") from None
    sock.listen(128)
    return sock


def run(args: argparse.Namespace) -> int:
    """Load the models, then serve the page and the API until Ctrl-C."""
    args, device_name = from_flags(ServeOptions, args), from_flags(RunSettings, args).device
    run_dir = args.run
    if run_dir is None and not args.checkpoint:
        run_dir = Path("runs/default")
    data_dir = args.data or (run_dir / "data" if run_dir is not None else None)
    if args.data is not None and not (args.data / "sft_test.json").is_file():
        raise FileNotFoundError(f"{args.data} holds no sft_test.json; give the data folder of a run "
                                f"(`python -m gpt_scratch data` writes one)")
    check_device(device_name)
    device = pick_device(device_name)
    sock = open_socket(args.host, args.port)  # first, so that a port in use is said before the models load
    try:
        models = load_models(run_dir, args.checkpoint, device)
        questions = load_world_questions(data_dir if data_dir is not None and data_dir.is_dir() else None)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    address = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    print(f"serving {len(models)} models ({', '.join(models)}) at {address}  (Ctrl-C stops)", flush=True)
    if not questions:
        print("no data folder with the world's questions: answers come without the judge's verdict (--data DIR)")
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(f"note: listening on {host}, so other machines on the network can reach the page too")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    config = uvicorn.Config(build_app(models, questions), log_level="info", timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m gpt_scratch.serve", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except (FileNotFoundError, ValueError) as err:
        print_error(parser.prog, str(err))
        return 2


if __name__ == "__main__":
    sys.exit(main())
