"""Generator: the KV-cache loop reproduces PyTorch, sampling is seeded, stops are honoured."""

import numpy as np
import pytest
import torch

from edgetx.errors import InputError
from edgetx.models.train import load_checkpoint
from edgetx.runtimes import GenerationConfig, Generator, Session
from edgetx.runtimes.generate import _StopFilter, sample_next


@pytest.fixture(scope="module")
def generator(tiny_bundle_master):
    return Generator(Session(tiny_bundle_master))


@torch.no_grad()
def test_greedy_matches_pytorch_without_cache(generator, tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint)
    prompt = list(b"def main():\n    ")
    ids = list(prompt)
    for _ in range(20):  # PyTorch, recomputing the whole sequence each step
        logits, _ = model(torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    got = list(generator.tokens(prompt, GenerationConfig(max_new_tokens=20)))
    assert got == ids[len(prompt):]
    assert generator.finish_reason == "length"
    assert generator.stats.new_tokens == 20


def test_sampling_is_seeded(generator):
    config = GenerationConfig(max_new_tokens=30, temperature=1.0, top_p=0.95, seed=7)
    first = list(generator.tokens(b"import ", config))
    assert list(generator.tokens(b"import ", config)) == first
    config.seed = 8
    assert list(generator.tokens(b"import ", config)) != first


def test_top_k_1_is_greedy(generator):
    greedy = list(generator.tokens(b"x = ", GenerationConfig(max_new_tokens=10)))
    top1 = list(generator.tokens(b"x = ", GenerationConfig(max_new_tokens=10, temperature=2.0, top_k=1, seed=0)))
    assert top1 == greedy


def test_sample_next_respects_top_k_and_top_p():
    logits = np.array([5.0, 4.0, 1.0, 0.0])
    rng = np.random.default_rng(0)
    picks = {sample_next(logits, GenerationConfig(temperature=1.0, top_k=2), rng) for _ in range(200)}
    assert picks == {0, 1}
    picks = {sample_next(logits, GenerationConfig(temperature=1.0, top_p=0.5), rng) for _ in range(50)}
    assert picks == {0}


def test_stop_sequence_ends_text_and_is_not_emitted():
    f = _StopFilter((b"\n\n",))
    out = f.push(b"ab\n") + f.push(b"c\n") + f.push(b"\nzz")
    assert out == b"ab\nc" and f.stopped


def test_partial_stop_prefix_is_released_when_it_does_not_complete():
    f = _StopFilter((b"END",))
    assert f.push(b"xE") == b"x"
    assert f.push(b"N") == b""
    assert f.push(b"d") == b"ENd"
    assert f.flush() == b""


def test_stream_stops_on_stop_text(generator):
    free = generator.generate("def f(x):", GenerationConfig(max_new_tokens=40))
    stop = free[5:7].encode()
    text = generator.generate("def f(x):", GenerationConfig(max_new_tokens=40, stop=(stop,)))
    assert generator.finish_reason == "stop"
    assert free.startswith(text) and stop.decode() not in text


def test_context_limit_stops_generation(generator):
    limit = generator.max_positions
    tokens = list(generator.tokens([65] * (limit - 3), GenerationConfig(max_new_tokens=50)))
    assert len(tokens) == 4 and generator.finish_reason == "context"


@pytest.mark.parametrize("prompt, config, message", [
    ([], GenerationConfig(), "prompt is empty"),
    ([300], GenerationConfig(), "outside the vocabulary"),
    ([1] * 1000, GenerationConfig(), "shorten the prompt"),
    ([1], GenerationConfig(temperature=-1), "temperature must be >= 0"),
    ([1], GenerationConfig(top_p=0.0), "top_p must be in"),
])
def test_bad_generation_requests(generator, prompt, config, message):
    with pytest.raises(InputError, match=message):
        list(generator.tokens(prompt, config))


def test_stream_never_splits_a_character(generator, monkeypatch):
    text = "héllo wörld → ok END more"
    monkeypatch.setattr(generator, "tokens", lambda ids, config: iter(text.encode()))
    pieces = list(generator.stream("x", GenerationConfig(stop=(b" END",))))
    assert "".join(pieces) == "héllo wörld → ok"
    assert not any("\ufffd" in p for p in pieces)
