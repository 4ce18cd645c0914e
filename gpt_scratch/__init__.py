"""gpt-scratch: a GPT written by hand, from tokenizer to aligned chat model.

Modules, in the order the course builds them:
    tokenizer   byte-level BPE (trained from scratch) with tiktoken as the fast runtime
    model       GPTConfig, attention, blocks, GPT, KV cache; chapter 12's switches (RMSNorm, RoPE, SwiGLU, GQA)
    generate    greedy / temperature / top-k / top-p sampling
    data        token windows for pretraining
    train       the training loop; checkpoint: saving and loading model folders
    pretrain    the pretraining stage; gpt2: Hugging Face GPT-2 weight import/export
    llama       Hugging Face Llama-family weight import/export (chapter 12)
    world       the embedded world: corpus, instruction tasks, judge, preference pairs
    cli         `python -m gpt_scratch <stage>`; pipeline: the main job `run`
"""

__version__ = "0.1.0"
