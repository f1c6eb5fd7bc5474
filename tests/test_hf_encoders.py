"""Hugging Face encoder-only models beyond BERT, and the sequence- / token-classification heads: tiny
random-init configs (hidden 64, 2 layers) with real trained tokenizers, built, verified and run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hf_models import ENCODERS, PADDING_VARIANT, byte_level_tokenizer, save_tiny_encoder, tiny_encoder_config
from edgetx.build import build
from edgetx.bundle import Bundle
from edgetx.cli import main
from edgetx.errors import EdgetxError
from edgetx.kinds import get_kind
from edgetx.runtimes import Session
from edgetx.verify.parity import verify

TEXTS = ["Return the index where to insert item x in list a.", "A short one",
         "Héllo wörld, this sentence is longer than the others so that the batch is padded."]
NER = ("O", "B-PER", "I-PER", "B-LOC")
SENTIMENT = ("NEG", "POS")
HEADS = [("bert", "sequence"), ("modernbert", "sequence"), ("deberta-v2", "sequence"),
         ("roberta", "token"), ("distilbert", "token"), ("electra", "token")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(model type, head) -> (model folder, bundle), built once per module; export breadth, so no
    optimization or quantization (the full default build is its own test)."""
    cache = {}

    def get(model_type: str, head: str | None = None):
        if (model_type, head) not in cache:
            root = tmp_path_factory.mktemp(f"{model_type}-{head}")
            labels = {None: (), "sequence": SENTIMENT, "token": NER}[head]
            folder = save_tiny_encoder(model_type, root / "model", head, labels)
            cache[model_type, head] = (folder, build(folder, root / "bundle", optimize=False, quantize=()))
        return cache[model_type, head]

    return get


@torch.no_grad()
def _torch_logits(folder, head: str | None, bundle) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's output for TEXTS (padded), fed only the inputs the bundle's graph takes, and the mask."""
    import transformers as tf

    auto = {None: tf.AutoModel, "sequence": tf.AutoModelForSequenceClassification,
            "token": tf.AutoModelForTokenClassification}[head]
    model = auto.from_pretrained(folder, dtype=torch.float32).eval()
    encoded = tf.AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="pt")
    names = [s["name"] for s in bundle.io["inputs"]]
    out = model(**{n: encoded[n] for n in names})
    return (out.logits if head else out.last_hidden_state).numpy(), encoded["attention_mask"].numpy()


# --- fast: which models are encoders, and what a refused one is told -------------------------------------


@pytest.mark.parametrize("model_type", sorted(ENCODERS))
def test_transformers_registries_call_these_encoders(model_type):
    from edgetx.exporters.hf_encoder import is_encoder, task_of

    config = tiny_encoder_config(model_type)
    assert is_encoder(config, f"{model_type}Model")
    assert not is_encoder(config, "BertLMHeadModel")  # a causal-LM architecture goes to the decoder side
    config.architectures = ["XForTokenClassification"]
    assert task_of(config)[0] == "token-classification"


def test_decoders_and_encoder_decoders_are_not_encoders():
    import transformers as tf

    from edgetx.exporters.hf_encoder import is_encoder

    assert not is_encoder(tf.GPT2Config(), "GPT2ForSequenceClassification")  # no masked-LM head
    assert not is_encoder(tf.LlamaConfig(), "LlamaForSequenceClassification")
    assert not is_encoder(tf.BartConfig(), "BartForSequenceClassification")  # encoder-decoder
    assert not is_encoder(tf.BertConfig(is_decoder=True), "BertModel")


def test_a_decoder_classifier_is_refused_with_a_reason(tmp_path):
    import transformers as tf

    folder = tmp_path / "gpt2-cls"
    tf.GPT2Config(vocab_size=384, n_embd=32, n_layer=1, n_head=2, n_positions=64,
                  architectures=["GPT2ForSequenceClassification"]).save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(EdgetxError) as error:
        build(folder, tmp_path / "b")
    message = str(error.value)
    assert "GPT2ForSequenceClassification (model_type 'gpt2') is neither a causal LM" in message
    assert "no masked-LM head" in message and "\n" not in message and not (tmp_path / "b").exists()


def test_head_kinds_are_registered_with_their_helpers():
    assert get_kind("sequence-classification").helpers == {"classify"}
    assert get_kind("token-classification").helpers == {"tag"}
    rank2 = [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}]
    inputs = [{"name": "input_ids"}, {"name": "attention_mask"}]
    assert get_kind("sequence-classification").io_problem(inputs, rank2) is None
    assert "rank 3" in get_kind("token-classification").io_problem(inputs, rank2)


# --- slow: export breadth, heads, the full default build -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(set(ENCODERS) - set(PADDING_VARIANT)))
def test_encoder_type_builds_verifies_and_embeds_like_pytorch(built, model_type):
    folder, bundle = built(model_type)
    assert bundle.model["kind"] == "encoder" and bundle.model["model_type"] == model_type
    parity = bundle.variant("fp32").parity
    assert parity["passed"], parity
    assert all(r.passed for r in verify(Bundle.load(bundle.path)))
    names = [s["name"] for s in bundle.io["inputs"]]
    takes_types = model_type in ("bert", "electra", "albert", "deberta-v2")  # WordPiece + token types in the forward
    assert names == ["input_ids", "attention_mask"] + (["token_type_ids"] if takes_types else [])
    hidden, mask = _torch_logits(folder, None, bundle)
    from edgetx.kinds.encoder import pool

    want = pool(hidden, mask, bundle.model["pooling"])
    got = Session(bundle.path).embed(TEXTS)
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", PADDING_VARIANT)
@torch.no_grad()
def test_a_model_that_padding_changes_is_checked_and_run_a_row_at_a_time(built, model_type):
    """PyTorch itself answers a sentence differently inside a padded batch: the bundle says so, its parity holds
    each row to PyTorch's answer alone, and embed gives every text what PyTorch gives it alone."""
    import transformers as tf

    from edgetx.kinds.encoder import pool

    folder, bundle = built(model_type)
    padding = bundle.model["padding"]
    assert not padding["invariant"] and padding["max_abs"] > 1e-3, padding
    checks = {c["name"]: c for c in bundle.variant("fp32").parity["checks"]}
    assert checks["rows alone"]["passed"] and "moves by" in checks["rows alone"]["detail"], checks
    assert any("padded batch" in note for note in bundle.manifest["provenance"]["export_notes"])
    model = tf.AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    names = [s["name"] for s in bundle.io["inputs"]]
    want = []
    for text in TEXTS:  # each text alone, unpadded
        encoded = tokenizer([text], return_tensors="pt")
        hidden = model(**{n: encoded[n] for n in names}).last_hidden_state.numpy()
        want.append(pool(hidden, encoded["attention_mask"].numpy(), bundle.model["pooling"])[0])
    got = Session(bundle.path).embed(TEXTS)
    np.testing.assert_allclose(got, np.stack(want), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("model_type,head", HEADS)
def test_head_builds_and_labels_like_pytorch(built, model_type, head):
    folder, bundle = built(model_type, head)
    kind = {"sequence": "sequence-classification", "token": "token-classification"}[head]
    assert bundle.model["kind"] == kind and bundle.model["architecture"].endswith(
        "ForSequenceClassification" if head == "sequence" else "ForTokenClassification")
    labels = list(SENTIMENT if head == "sequence" else NER)
    assert bundle.model["labels"] == labels and bundle.io["outputs"][0]["name"] == "logits"
    parity = bundle.variant("fp32").parity
    assert parity["passed"] and {c["name"] for c in parity["checks"]} == {"logits", "labels", "rows alone"}
    logits, mask = _torch_logits(folder, head, bundle)
    session = Session(bundle.path)
    if head == "sequence":
        got = session.classify(TEXTS)
        assert [r["label"] for r in got] == [labels[i] for i in logits.argmax(-1)]
        assert all(abs(sum(r["scores"].values()) - 1) < 1e-5 for r in got)
        with pytest.raises(EdgetxError, match="tag needs a token classifier"):
            session.tag(TEXTS)
    else:
        for row, words in enumerate(session.tag(TEXTS)):
            assert words and all(TEXTS[row][w["start"]:w["end"]] == w["word"] for w in words)
            for word in words:
                for token in word["tokens"]:
                    assert mask[row, token["position"]] == 1
                    assert token["label"] == labels[int(logits[row, token["position"]].argmax())]
        with pytest.raises(EdgetxError, match="classify needs a sequence classifier"):
            session.classify(TEXTS)


@pytest.mark.slow
def test_token_head_cli_tag_json(built):
    _, bundle = built("roberta", "token")
    result = CliRunner().invoke(main, ["tag", str(bundle.path), TEXTS[1], "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["text"] == TEXTS[1] and [w["word"] for w in row["words"]] == ["A", "short", "one"]
    assert {w["label"] for w in row["words"]} <= set(NER)
    result = CliRunner().invoke(main, ["classify", str(bundle.path), "x"])
    assert result.exit_code == 1 and "classify needs a sequence classifier" in result.stderr


@pytest.mark.slow
def test_sequence_head_full_default_build_gates_on_labels(tmp_path):
    """The default build (optimization, int8-outliers and int4 behind label-agreement + KL gates), then
    verify, the CLI, bench and the report through the kind."""
    folder = save_tiny_encoder("bert", tmp_path / "model", "sequence", SENTIMENT)
    bundle = build(folder, tmp_path / "bundle")
    results = bundle.manifest["quantization"]["results"]
    assert set(results) == {"int8-outliers", "int4"}
    for name, result in results.items():
        gate = result["gate"]
        assert {"top1", "kld_mean", "rows"} <= set(gate) and gate["rows"] == 64
        assert result["gate_passed"] == (gate["top1"] >= 0.97 if name == "int8-outliers" else gate["top1"] >= 0.90) \
            or not result["gate_passed"]
        assert (name in bundle.variants) == result["gate_passed"]
    assert all(r.passed for r in verify(Bundle.load(bundle.path)))
    result = CliRunner().invoke(main, ["classify", str(bundle.path), *TEXTS, "--json"])
    assert result.exit_code == 0, result.output
    assert [r["label"] for r in json.loads(result.stdout)] == [r["label"] for r in Session(bundle.path).classify(TEXTS)]
    result = CliRunner().invoke(main, ["classify", str(bundle.path), TEXTS[0]])
    assert result.exit_code == 0 and ("NEG" in result.stdout or "POS" in result.stdout)
    result = CliRunner().invoke(main, ["bench", str(bundle.path), "--threads", "1", "--repeats", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert all(r["batches"][0]["p50_ms"] > 0 for r in json.loads(result.stdout))
    result = CliRunner().invoke(main, ["report", str(bundle.path), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "sentence label agreement vs fp32" in (bundle.path / "report.md").read_text()


def test_classify_and_tag_help_show_examples():
    for verb in ("classify", "tag"):
        result = CliRunner().invoke(main, [verb, "--help"])
        assert result.exit_code == 0 and f"edgetx {verb} dist/" in result.output and "--json" in result.output


def test_an_encoder_export_failure_points_at_the_encoder_adjustments(tmp_path, monkeypatch):
    from hf_models import save_tiny

    import edgetx.exporters.hf_encoder as encoder_module

    def broken_export(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::frobnicate")

    monkeypatch.setattr(encoder_module, "export_encoder", broken_export)
    folder = save_tiny("bert", tmp_path / "m")
    result = CliRunner().invoke(main, ["build", str(folder), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "could not export BertModel" in result.stderr
    assert "exporters/hf_encoder.py (ADJUSTMENTS)" in result.stderr
    assert not (tmp_path / "b").exists()
