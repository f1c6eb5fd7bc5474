"""A plain nn.Module in (tests/module_models.py: not edgetx's GPT, not transformers): edgetx.build checks its forward
contract, builds a verified bundle through the one pipeline, and the runtime reproduces the module in torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgetx
import module_models as mm
from hf_models import byte_level_tokenizer, wordpiece_tokenizer

from edgetx.bundle import Bundle
from edgetx.errors import EdgetxError, InputError
from edgetx.exporters.module import ContractError, load_weights, module_source
from edgetx.kinds.encoder import pool
from edgetx.runtimes import GenerationConfig, Generator, Session
from edgetx.verify.parity import verify

TEXT = "Return the value of the key if it is in the dictionary."


@pytest.fixture(scope="module")
def text_tokenizer():
    return byte_level_tokenizer().backend_tokenizer  # a tokenizers.Tokenizer


@pytest.fixture(scope="module")
def decoder_bundle(tmp_path_factory, text_tokenizer) -> Bundle:
    """Through the whole pipeline: fused candidates, int8 behind its gate (default golden and held-out prose)."""
    return edgetx.build(mm.decoder(), tmp_path_factory.mktemp("module") / "decoder", kind="causal-lm",
                        tokenizer=text_tokenizer, quantize=("int8",))


@pytest.fixture(scope="module")
def word_tokenizer():
    return wordpiece_tokenizer()  # a transformers fast tokenizer (training it twice may not give the same one)


@pytest.fixture(scope="module")
def encoder_bundle(tmp_path_factory, word_tokenizer) -> Bundle:
    return edgetx.build(mm.encoder(), tmp_path_factory.mktemp("module") / "encoder", kind="encoder",
                        tokenizer=word_tokenizer, pooling={"mode": "mean", "normalize": True},
                        optimize=False, quantize=())


def test_decoder_module_builds_verifies_and_generates_as_torch(decoder_bundle, text_tokenizer):
    manifest = decoder_bundle.manifest
    assert manifest["model"]["num_kv_heads"] == 2 and manifest["model"]["head_dim"] == 8  # read off the module
    assert manifest["model"]["vocab_size"] == mm.VOCAB and manifest["model"]["max_positions"] == 128
    assert "int8" in manifest["quantization"]["results"] and "optimization" in manifest
    assert all(r.passed for r in verify(Bundle.load(decoder_bundle.path)))
    session = Session(decoder_bundle.path)
    prompt = text_tokenizer.encode(TEXT).ids
    want = mm.greedy(mm.decoder(), prompt, 20)
    generator = Generator(session)
    assert list(generator.tokens(prompt, GenerationConfig(max_new_tokens=20))) == want
    text = generator.generate(TEXT, GenerationConfig(max_new_tokens=20))  # the bundle's tokenizer, torch-free
    assert text == text_tokenizer.decode(want)


def test_encoder_module_builds_verifies_and_embeds_as_torch(encoder_bundle, word_tokenizer):
    assert [i["name"] for i in encoder_bundle.manifest["io"]["inputs"]] == ["input_ids", "attention_mask",
                                                                            "token_type_ids"]
    assert all(r.passed for r in verify(Bundle.load(encoder_bundle.path)))
    sentences = ["A first sentence about files.", "Return the number of items in the list, or none."]
    got = Session(encoder_bundle.path).embed(sentences)
    batch = word_tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = mm.encoder()(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).numpy()
    want = pool(hidden, batch["attention_mask"].numpy(), {"mode": "mean", "normalize": True})
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_cli_builds_a_factory_without_tokenizer(tmp_path):
    from edgetx.cli import main

    out = tmp_path / "ids"
    args = ["build", "module_models:decoder_with_settings", "--out", str(out), "--no-optimize", "--quantize", "none"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    bundle = Bundle.load(out)
    assert bundle.manifest["tokenizer"]["type"] == "ids"
    assert bundle.manifest["provenance"]["source"] == "module_models:decoder_with_settings"
    generator = Generator(Session(out))
    assert list(generator.tokens(mm.PROMPTS[0], GenerationConfig(max_new_tokens=12))) == \
        mm.greedy(mm.decoder(), mm.PROMPTS[0], 12)
    with pytest.raises(InputError, match="built without a tokenizer"):
        generator.generate("some text")
    result = CliRunner().invoke(main, ["generate", str(out), "-p", "hello"])
    assert result.exit_code == 1 and "built without a tokenizer" in result.output
    assert not result.output.startswith("hello")  # nothing is echoed before the error


def test_cli_factory_errors_are_one_line(tmp_path):
    from edgetx.cli import main

    for args, message in ((["module_models:decoder"], "no model kind given; say which kind"),
                          (["module_models:decoder_with_settings", "--kind", "encoder"], "sets kind itself"),
                          (["module_models:missing"], "has no callable missing"),
                          (["no_such_package.models:make"], "cannot import no_such_package.models")):
        result = CliRunner().invoke(main, ["build", *args, "--out", str(tmp_path / "x")])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output, result.output


# --- contract violations: the probe names the part that is wrong, before any export ---------------------------

class LogitsOnly(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = mm.decoder()
        self.n_layer, self.n_head, self.n_kv_head, self.n_embd, self.block_size = 2, 4, 2, 32, 128

    def forward(self, input_ids, attention_mask, position_ids, past):
        return self.inner(input_ids, attention_mask, position_ids, past)[0]


class ForgetsPast(LogitsOnly):
    """Decodes as if every call were a prefill: returns a well-shaped present but never attends to the past."""

    def forward(self, input_ids, attention_mask, position_ids, past):
        b, seq = input_ids.shape
        empty = [(torch.zeros(b, 2, 0, 8),) * 2 for _ in range(2)]
        logits, present = self.inner(input_ids, attention_mask[:, -seq:], position_ids, empty)
        return logits, [(torch.cat([pk, k], 2), torch.cat([pv, v], 2)) for (pk, pv), (k, v) in zip(past, present)]


class IgnoresMask(LogitsOnly):
    def forward(self, input_ids, attention_mask, position_ids, past):
        return self.inner(input_ids, torch.ones_like(attention_mask), position_ids, past)


class TupleEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner, self.max_position_embeddings = mm.encoder(), 64

    def forward(self, input_ids, attention_mask, token_type_ids):
        return (self.inner(input_ids, attention_mask, token_type_ids),)


class UnmaskedEncoder(TupleEncoder):
    def forward(self, input_ids, attention_mask):
        return self.inner(input_ids, torch.ones_like(attention_mask), torch.zeros_like(input_ids))


@pytest.mark.parametrize("module, kind, message", [
    (mm.decoder(cache_repeated=True), "causal-lm",
     "present[0] key has shape (1, 4, 1, 8); expected (batch=1, kv_heads=2, past+seq=1, head_dim=8)"),
    (LogitsOnly(), "causal-lm", "returned Tensor at prefill of 1 token (reading vocab_size off the logits); "
                                "expected a pair (logits, present)"),
    (ForgetsPast(), "causal-lm", "decoding one token with the past of 3 gives logits"),
    (IgnoresMask(), "causal-lm", "must hide the keys where attention_mask is 0"),
    (TupleEncoder(), "encoder", "encoder forward returned tuple; expected the last_hidden_state tensor"),
    (UnmaskedEncoder(), "encoder", "must mask the keys where attention_mask is 0"),
])
def test_contract_violations_are_named(module, kind, message):
    with pytest.raises(ContractError) as error:
        module_source(module, kind=kind, inputs=mm.PROMPTS)
    assert message in str(error.value)


def test_module_settings_are_checked(tmp_path):
    with pytest.raises(EdgetxError, match="'regressor' is not registered; say which kind the module is: "
                                          "kind='causal-lm' or 'encoder'"):
        module_source(mm.decoder(), kind="regressor", inputs=mm.PROMPTS)
    bare = torch.nn.Sequential(torch.nn.Embedding(10, 4))
    with pytest.raises(EdgetxError, match=r"cannot tell the causal-lm module's num_layers: give it, e\.g\. spec="):
        module_source(bare, kind="causal-lm", inputs=mm.PROMPTS)
    with pytest.raises(EdgetxError, match="holds text .* but no tokenizer was given"):
        module_source(mm.decoder(), kind="causal-lm", inputs=["some text", "more"])
    with pytest.raises(EdgetxError, match="needs held-out data for its gates"):
        edgetx.build(mm.decoder(), tmp_path / "q", kind="causal-lm", inputs=mm.PROMPTS, quantize=("int8",))
    with pytest.raises(EdgetxError, match="pooling is an encoder setting"):
        module_source(mm.decoder(), kind="causal-lm", inputs=mm.PROMPTS, pooling="cls")
    assert not (tmp_path / "q").exists()


def test_load_weights_refuses_pickle_unless_allowed(tmp_path):
    from safetensors.torch import save_model

    trained, fresh = mm.decoder(seed=1), mm.decoder(seed=2)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    with pytest.raises(EdgetxError, match="is a pickle file.*--allow-pickle"):
        load_weights(fresh, tmp_path / "w.pt")
    load_weights(fresh, tmp_path / "w.pt", allow_pickle=True)
    assert torch.equal(fresh.head.weight, trained.head.weight)
    save_model(mm.decoder(seed=3), str(tmp_path / "w.safetensors"))
    assert torch.equal(load_weights(fresh, tmp_path / "w.safetensors").head.weight, mm.decoder(seed=3).head.weight)


def test_factories_and_tokenizer_forms(tmp_path, text_tokenizer):
    from edgetx.exporters.module import bundle_tokenizer, load_factory

    module, settings = load_factory("module_models:seen_allow_pickle", allow_pickle=True)
    assert isinstance(module, mm.TinyDecoder) and settings["name"] == "allow_pickle=True"
    with pytest.raises(EdgetxError, match="returned str; a factory returns a torch.nn.Module, or \\(module, settings\\)"):
        load_factory("module_models:not_a_module")
    text_tokenizer.save(str(tmp_path / "tokenizer.json"))
    from_path = bundle_tokenizer(tmp_path / "tokenizer.json", eos_token_ids=[0])
    assert from_path.encode(TEXT) == text_tokenizer.encode(TEXT).ids and from_path.block["eos_token_ids"] == [0]
    with pytest.raises(EdgetxError, match="no such tokenizer file"):
        bundle_tokenizer(tmp_path / "missing.json")
    with pytest.raises(EdgetxError, match="tokenizer must be a tokenizers.Tokenizer, a path to tokenizer.json"):
        bundle_tokenizer(42)
