import pytest
import torch

from gpt_scratch.data import TokenWindows, read_corpus, split_train_val


def test_targets_are_inputs_shifted_by_one():
    windows = TokenWindows(torch.arange(100), block_size=8, batch_size=4, seed=0)
    x, y = windows.batch(0)
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y, x + 1)  # the stream is 0, 1, 2, ...: the next token is always one more


def test_batches_depend_only_on_seed_and_step():
    windows = TokenWindows(torch.arange(1000), block_size=8, batch_size=4, seed=0)
    assert torch.equal(windows.batch(3)[0], windows.batch(3)[0])
    assert not torch.equal(windows.batch(3)[0], windows.batch(4)[0])
    assert not torch.equal(windows.batch(3)[0], windows.batch(3, micro_step=1)[0])
    other = TokenWindows(torch.arange(1000), block_size=8, batch_size=4, seed=1)
    assert not torch.equal(windows.batch(3)[0], other.batch(3)[0])


def test_validation_batches_cover_the_stream_and_never_overrun():
    windows = TokenWindows(torch.arange(50), block_size=8, batch_size=4, seed=0)
    batches = windows.evenly_spaced_batches(3)
    starts = torch.cat([x[:, 0] for x, _ in batches])
    assert starts[0] == 0 and starts[-1] == 50 - 8 - 1
    assert all(int(y.max()) <= 49 for _, y in batches)


def test_split_keeps_the_end_for_validation():
    train, val = split_train_val(list(range(100)), 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))


def test_too_little_text_is_a_clear_error():
    with pytest.raises(ValueError, match="only 5 tokens"):
        TokenWindows(torch.arange(5), block_size=8, batch_size=2)


def test_read_corpus_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        read_corpus(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_corpus(tmp_path / "latin1.txt")
    (tmp_path / "ok.txt").write_text("héllo 世界")
    assert read_corpus(tmp_path / "ok.txt") == "héllo 世界"
