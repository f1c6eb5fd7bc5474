"""Batched generation, chat sessions that keep the cache, and prompt-lookup drafts: the same tokens as one prompt
at a time, as a fresh run over the whole history, and as plain greedy decoding, on tiny random-init decoders of many
families (fp32, unfused; one fused with GroupQueryAttention)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hf_models import save_tiny
from edgetx.build import build
from edgetx.cli import main
from edgetx.errors import EdgetxError
from edgetx.runtimes import ChatSession, GenerationConfig, Generator, Session
from edgetx.runtimes.tokenizer import apply_chat_template

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402

PROMPTS = ["def main():", "import os\nimport sys\n", "x", "class Foo(object):\n    def __init__(self):"]
# learned and rotary positions, ALiBi, sliding windows, parallel residual; bart's decoder
# is not padding-invariant in PyTorch itself (its prompts run one at a time)
FAMILIES = ["llama", "gpt2", "bloom", "gemma2", "gpt_neox", "bart"]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    cache = {}

    def get(model_type: str, **options) -> Path:
        key = (model_type, tuple(sorted(options.items())))
        if key not in cache:
            root = tmp_path_factory.mktemp(model_type)
            coverage.make_model(model_type, "causal-lm", root / "model")
            options = {"optimize": False, **options}
            cache[key] = build(root / "model", root / "bundle", quantize=(), **options).path
        return cache[key]

    return get


def _solo_and_batch(generator: Generator, config: GenerationConfig) -> tuple[list, list, list, list]:
    ids = [generator.tokenizer.encode(p) for p in PROMPTS]
    solo, reasons = [], []
    for prompt in ids:
        solo.append(list(generator.tokens(prompt, config)))
        reasons.append(generator.finish_reason)
    return solo, reasons, generator.tokens_batch(ids, config), generator.finish_reasons


@pytest.mark.slow
@pytest.mark.parametrize("model_type", FAMILIES)
def test_a_batch_gives_each_prompt_its_own_tokens(decoder, model_type):
    """Ragged prompts left-padded into one batch: greedy and seeded sampling give each prompt the tokens it gets
    alone; with end tokens met at different steps, rows leave the batch one by one and the rest go on unchanged."""
    generator = Generator(Session(decoder(model_type)))
    greedy = GenerationConfig(max_new_tokens=24)
    first, *_ = _solo_and_batch(generator, greedy)
    generator.tokenizer.eos_token_ids = {first[0][min(2, len(first[0]) - 1)], first[2][min(9, len(first[2]) - 1)]}  # rows 0, 2 end early
    for config in (greedy, GenerationConfig(max_new_tokens=16, temperature=0.9, top_k=40, seed=7)):
        solo, reasons, batch, batch_reasons = _solo_and_batch(generator, config)
        assert batch == solo and batch_reasons == reasons, (model_type, config)
        if config is greedy:  # rows did leave the batch at different steps
            assert batch_reasons.count("eos") >= 2 and len({len(t) for t in batch}) > 1, batch_reasons


@pytest.mark.slow
def test_a_batch_on_the_fused_graph_with_group_query_attention(decoder):
    import onnx

    bundle = decoder("llama", candidates=("ort-fusions",), optimize=True)
    graph = onnx.load(bundle / "fp32/model.onnx", load_external_data=False).graph
    assert any(n.op_type == "GroupQueryAttention" for n in graph.node)
    generator = Generator(Session(bundle))
    solo, _, batch, _ = _solo_and_batch(generator, GenerationConfig(max_new_tokens=24))
    assert batch == solo


@pytest.mark.slow
def test_generate_batch_texts_and_stop_sequences_match_one_at_a_time(decoder, tmp_path):
    generator = Generator(Session(decoder("llama")))
    config = GenerationConfig(max_new_tokens=20)
    texts = [generator.generate(p, config) for p in PROMPTS]
    stop = next(t[3:5] for t in texts if len(t) > 6).encode("utf-8")  # a piece one of the texts contains
    config = GenerationConfig(max_new_tokens=20, stop=(stop,))
    alone = [generator.generate(p, config) for p in PROMPTS]
    assert generator.generate_batch(PROMPTS, config) == alone and "stop" in generator.finish_reasons
    one_line = [PROMPTS[0], PROMPTS[2]]
    (tmp_path / "prompts.txt").write_text("\n".join(one_line) + "\n\n")
    result = CliRunner().invoke(main, ["generate", str(decoder("llama")), "--prompts-file", str(tmp_path / "prompts.txt"),
                                       "-n", "20"])
    assert result.exit_code == 0, result.output
    import json

    rows = json.loads(result.stdout)
    assert [r["prompt"] for r in rows] == one_line and [r["text"] for r in rows] == [texts[0], texts[2]]
    with pytest.raises(EdgetxError, match="prompt 1 is empty"):
        generator.tokens_batch([[1, 2], []])
    with pytest.raises(EdgetxError, match="list of prompts"):
        generator.generate_batch("one prompt")
    result = CliRunner().invoke(main, ["generate", str(decoder("llama"))])
    assert result.exit_code == 1 and "--prompt, or a file of prompts" in result.stderr


@pytest.fixture(scope="module")
def chat_bundle(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("chat")
    folder = save_tiny("llama", root / "model")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    return build(folder, root / "bundle", optimize=False, quantize=()).path


@pytest.mark.slow
def test_a_chat_keeps_its_cache_and_each_reply_is_a_fresh_runs(chat_bundle):
    """Turn N feeds only the tokens after what the cache holds, and its reply equals a fresh run over the whole
    history (greedy and seeded sampling)."""
    for config in (GenerationConfig(max_new_tokens=12), GenerationConfig(max_new_tokens=12, temperature=0.8, seed=3)):
        chat = ChatSession(Generator(Session(chat_bundle)), system="You are terse.")
        previous = 0  # the last turn's prompt length: what this turn finds in the cache, give or take a merge
        for turn, message in enumerate(["Hi there", "What is a list?", "And a dict?", "Thanks"]):
            reply = chat.send(message, config)
            history = chat.messages[:-1]
            assert chat.messages[-1] == {"role": "assistant", "content": reply}
            fresh = Generator(Session(chat_bundle)).generate(apply_chat_template(chat.spec, history), config)
            assert reply == fresh, (turn, reply, fresh)
            prompt = chat.generator.tokenizer.encode(apply_chat_template(chat.spec, history))
            assert chat.cached_ids[: len(prompt)] == prompt  # the cache holds the history, position by position
            # BPE may merge the last prompt token with the reply's first characters (no special tokens here)
            assert chat.reused_tokens >= previous - 2 and (chat.reused_tokens > 0) == (turn > 0), (turn, previous)
            previous = len(prompt)


@pytest.mark.slow
def test_chat_cli_and_bad_requests(chat_bundle, decoder):
    result = CliRunner().invoke(main, ["chat", str(chat_bundle), "-n", "6"], input="Hi there\n\nWhat is a list?\n")
    assert result.exit_code == 0, result.output
    replies = result.stdout.splitlines()
    chat = ChatSession(Generator(Session(chat_bundle)))
    config = GenerationConfig(max_new_tokens=6)
    assert replies == [chat.send("Hi there", config), chat.send("What is a list?", config)]
    assert "tokens from the cache" in result.stderr
    with pytest.raises(EdgetxError, match="no chat template"):
        ChatSession(Generator(Session(decoder("llama"))))
    with pytest.raises(EdgetxError, match="non-empty message"):
        chat.send("")
    messages = list(chat.messages)
    with pytest.raises(EdgetxError, match="the conversation has .* tokens"):
        chat.send("word " * 400)
    assert chat.messages == messages  # a refused turn leaves the history as it was
    assert chat.send("Thanks", config) == Generator(Session(chat_bundle)).generate(
        apply_chat_template(chat.spec, chat.messages[:-1]), config)


@pytest.mark.slow
def test_bench_measures_batched_decode_against_batch_1(decoder):
    import json

    result = CliRunner().invoke(main, ["bench", str(decoder("llama")), "-p", "8", "-n", "4", "--batch-sizes", "1,4",
                                       "--threads", "1", "--repeats", "1", "--json", "--no-save"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    (batched,) = row["batched_decode"]
    assert batched["batch"] == 4 and batched["decode_tokens_per_s"] > 0 and batched["x_batch_1"] > 0
    result = CliRunner().invoke(main, ["bench", str(decoder("llama")), "-p", "8", "-n", "4", "--threads", "1",
                                       "--repeats", "1", "--json", "--no-save"])
    assert "batched_decode" not in json.loads(result.stdout)[0]  # only when asked: --batch-sizes


def test_prompt_lookup_drafts_what_followed_the_latest_match():
    from edgetx.runtimes.lookup import PromptLookup

    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 2, 3, 7, 8])
    assert lookup.draft(3) == []  # the suffix (7, 8), (8) never occurred before
    lookup.extend([2, 3])
    assert lookup.draft(2) == [7, 8]  # (8, 2, 3) is new; (2, 3) last continued by 7
    assert lookup.draft(0) == []
    lookup.extend([4])
    assert lookup.draft(5) == [5, 9, 2, 3, 7]  # (2, 3, 4) matched at the start
    with pytest.raises(EdgetxError, match="use it with temperature 0"):
        GenerationConfig(prompt_lookup=4, temperature=0.7).check()
    with pytest.raises(EdgetxError, match="prompt_lookup must be >= 0"):
        GenerationConfig(prompt_lookup=-1).check()


REPEATING = "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a + b\n\ndef add(a, b):\n"


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["llama", "gpt2", "bloom", "llama-fused"])
def test_prompt_lookup_gives_the_greedy_tokens_in_fewer_runs(decoder, model_type):
    bundle = decoder("llama", candidates=("ort-fusions",), optimize=True) if model_type == "llama-fused" \
        else decoder(model_type)
    generator = Generator(Session(bundle))
    ids = generator.tokenizer.encode(REPEATING)
    plain = list(generator.tokens(ids, GenerationConfig(max_new_tokens=40)))
    assert generator.stats.runs == 40
    drafted = list(generator.tokens(ids, GenerationConfig(max_new_tokens=40, prompt_lookup=8)))
    stats = generator.stats
    assert drafted == plain and generator.finish_reason == "length"
    assert stats.accepted > 0 and stats.runs < 40 and stats.new_tokens == 40, stats


@pytest.mark.slow
def test_a_chat_with_prompt_lookup_replies_as_a_fresh_greedy_run(chat_bundle):
    chat = ChatSession(Generator(Session(chat_bundle)))
    for message in ("Repeat: one two three one two three", "Again: one two three"):
        reply = chat.send(message, GenerationConfig(max_new_tokens=16, prompt_lookup=6))
        fresh = Generator(Session(chat_bundle)).generate(apply_chat_template(chat.spec, chat.messages[:-1]),
                                                         GenerationConfig(max_new_tokens=16))
        assert reply == fresh


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["gpt2", "bloom", "gemma2", "llama-fused"])  # the batch test compares the
def test_the_bound_cache_gives_the_tokens_of_the_array_loop(decoder, model_type):  # others (solo: bound; batch: arrays)
    """The KV cache kept bound to onnxruntime between steps (no copy per step; the fused attention writes in place
    into one preallocated buffer, grown when a run passes its end) gives the tokens of the loop that passes the cache
    in and out as arrays: greedy, sampled, with prompt-lookup drafts taken back, and in a chat that cuts it back."""
    fused = model_type == "llama-fused"
    bundle = decoder("llama", candidates=("ort-fusions",), optimize=True) if fused else decoder(model_type)
    session = Session(bundle)
    bound, arrays = Generator(session), Generator(session, bind_cache=False)
    loop = bound.new_loop(4)  # room for 4 positions: a run of 30 grows it
    assert loop.binding.capacity == (4 if fused else None)  # in place on GroupQueryAttention, chained otherwise
    import onnx

    from edgetx.onnx_info import graph_skeleton  # how the graph is read for that: its nodes, not its weights

    whole = onnx.load(session.model_path).graph
    skeleton = graph_skeleton(session.model_path)
    assert list(skeleton.node) == list(whole.node) and list(skeleton.output) == list(whole.output)
    assert list(skeleton.input) == list(whole.input) and not skeleton.initializer
    ids = bound.tokenizer.encode(REPEATING)[:24]
    greedy = GenerationConfig(max_new_tokens=30)
    want = list(arrays.tokens(ids, greedy))
    assert list(bound.continue_from(loop, ids, greedy)) == want
    assert loop.past == len(ids) + len(want) - 1 and (not fused or loop.binding.capacity >= loop.past)
    for config in (GenerationConfig(max_new_tokens=20, temperature=0.8, top_p=0.9, seed=3),
                   GenerationConfig(max_new_tokens=30, prompt_lookup=6)):
        assert list(bound.tokens(ids, config)) == list(arrays.tokens(ids, config)), config
    cut, kept = bound.new_loop(8), arrays.new_loop()  # a cache cut back and run on gives the same logits
    prompt = np.array([ids], np.int64)
    for each in (cut, kept):
        each.prefill(prompt)
        each.truncate(10)
    np.testing.assert_allclose(cut.prefill(prompt[:, 14:18])["logits"], kept.prefill(prompt[:, 14:18])["logits"],
                               atol=1e-5)
    assert cut.past == kept.past == 14
    held = cut.step(ids[14])["logits"]  # what a step returned is the caller's: the next step writes elsewhere
    copy = held.copy()
    cut.step(ids[15])
    assert np.array_equal(held, copy)


@pytest.mark.slow
def test_a_chat_on_the_bound_cache_replies_as_on_arrays(chat_bundle):
    session = Session(chat_bundle)
    chat, arrays = ChatSession(Generator(session)), ChatSession(Generator(session, bind_cache=False))
    assert chat.loop.binding is not None and not hasattr(arrays.loop, "binding")
    for message in ("one two three", "and again, one two three", "x"):
        config = GenerationConfig(max_new_tokens=12)
        assert chat.send(message, config) == arrays.send(message, config)
        assert chat.loop.past == arrays.loop.past and chat.cached_ids == arrays.cached_ids


@pytest.mark.slow
def test_a_draft_model_gives_the_greedy_tokens_in_fewer_runs(decoder):
    """Speculative decoding with a draft model: the target's own greedy tokens whatever the draft proposes — itself
    (every draft taken: fewer runs) or another model of the same tokenizer (most drafts refused) —, and a draft with
    another vocabulary refused."""
    target = Session(decoder("llama"))
    plain = Generator(target)
    ids = plain.tokenizer.encode(PROMPTS[3])
    want = list(plain.tokens(ids, GenerationConfig(max_new_tokens=24)))
    config = GenerationConfig(max_new_tokens=24, draft_tokens=4)
    itself = Generator(target, draft=Session(decoder("llama")))
    assert list(itself.tokens(ids, config)) == want
    assert itself.stats.accepted == itself.stats.drafted > 0 and itself.stats.runs < 24, itself.stats
    other = Generator(target, draft=Session(decoder("gpt2")))
    assert list(other.tokens(ids, config)) == want and other.stats.drafted > 0
    with pytest.raises(EdgetxError, match="needs a draft model"):
        list(plain.tokens(ids, config))
    with pytest.raises(EdgetxError, match="greedy"):
        GenerationConfig(draft_tokens=4, temperature=0.7).check()
    smaller = Generator(Session(decoder("gpt2")))
    smaller.vocab_size -= 1  # as a model of another vocabulary
    with pytest.raises(EdgetxError, match="vocabulary of"):
        Generator(target, draft=smaller)


@pytest.mark.slow
def test_generate_cli_with_a_draft_variant(decoder):
    bundle = str(decoder("llama"))
    plain = CliRunner().invoke(main, ["generate", bundle, "-p", "def main():", "-n", "12"])
    drafted = CliRunner().invoke(main, ["generate", bundle, "-p", "def main():", "-n", "12", "--draft-variant", "fp32"])
    assert plain.exit_code == drafted.exit_code == 0, drafted.output
    assert drafted.stdout == plain.stdout and "speculative" in drafted.stderr
    missing = CliRunner().invoke(main, ["generate", bundle, "-p", "x", "--draft-variant", "int3"])
    assert missing.exit_code != 0 and "no variant 'int3'" in missing.output
