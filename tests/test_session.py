"""Session input validation: mistakes are reported by edgetx before onnxruntime sees them."""

import numpy as np
import pytest

from edgetx.errors import BackendError, InputError
from edgetx.runtimes import Session
from edgetx.kinds.decoding import empty_cache


@pytest.fixture(scope="module")
def session(tiny_bundle_master):
    return Session(tiny_bundle_master)


def good_feeds(session, batch=1, seq=3, past=0):
    feeds = {"input_ids": np.zeros((batch, seq), np.int64),
             "attention_mask": np.ones((batch, past + seq), np.int64),
             "position_ids": np.arange(past, past + seq, dtype=np.int64)[None].repeat(batch, 0)}
    cache = empty_cache(session.inputs, batch)
    for name, value in cache.items():
        shape = list(value.shape)
        shape[2] = past
        feeds[name] = np.zeros(shape, np.float32)
    return feeds


@pytest.fixture
def guarded(session, monkeypatch):
    """Fail the test if an invalid input reaches the backend."""
    def refuse(*args, **kwargs):
        raise AssertionError("invalid inputs reached onnxruntime")
    monkeypatch.setattr(session._session, "run", refuse)
    return session


def test_valid_inputs_run(session):
    out = session.run(good_feeds(session, batch=2, seq=3, past=4))
    assert out["logits"].shape == (2, 3, 256)
    assert out["present.0.key"].shape[2] == 7


def test_wrong_name(guarded):
    feeds = good_feeds(guarded)
    feeds["inputs_ids"] = feeds.pop("input_ids")
    with pytest.raises(InputError, match=r"unknown input\(s\) inputs_ids; missing input\(s\) input_ids"):
        guarded.run(feeds)


def test_wrong_dtype(guarded):
    feeds = good_feeds(guarded)
    feeds["input_ids"] = feeds["input_ids"].astype(np.int32)
    with pytest.raises(InputError, match="'input_ids': expected dtype int64, got int32"):
        guarded.run(feeds)


def test_wrong_rank(guarded):
    feeds = good_feeds(guarded)
    feeds["input_ids"] = feeds["input_ids"][0]
    with pytest.raises(InputError, match="'input_ids': expected rank 2"):
        guarded.run(feeds)


def test_inconsistent_batch(guarded):
    feeds = good_feeds(guarded, batch=2)
    feeds["position_ids"] = feeds["position_ids"][:1]
    with pytest.raises(InputError, match="all inputs must agree on batch"):
        guarded.run(feeds)


def test_mask_must_cover_past_and_new_tokens(guarded):
    feeds = good_feeds(guarded, seq=3, past=4)
    feeds["attention_mask"] = np.ones((1, 3), np.int64)
    with pytest.raises(InputError, match=r"'attention_mask': axis 1 should be past\+seq=7"):
        guarded.run(feeds)


def test_fixed_dim(guarded):
    feeds = good_feeds(guarded)
    feeds["past_key_values.0.key"] = np.zeros((1, 3, 0, 16), np.float32)
    with pytest.raises(InputError, match="past_key_values.0.key"):
        guarded.run(feeds)


def test_not_an_array(guarded):
    feeds = good_feeds(guarded)
    feeds["input_ids"] = [[1, 2, 3]]
    with pytest.raises(InputError, match="expected a numpy array"):
        guarded.run(feeds)


def test_unknown_backend(tiny_bundle_master):
    with pytest.raises(BackendError, match="unknown backend 'tpu'; known backends: .*ort-cpu"):
        Session(tiny_bundle_master, backend="tpu")


def test_wire_keeps_every_shape_including_scalars():
    """Remote workers (arm64, web) get feeds over edgetx.runtimes.wire: a scalar such as
    logits_to_keep must arrive as a scalar, a non-contiguous view as its values."""
    import io

    from edgetx.runtimes.worker.wire import read_message, write_message

    arrays = {"scalar": np.array(1, dtype=np.int64), "matrix": np.arange(12, dtype=np.float32).reshape(3, 4).T,
              "empty": np.zeros((1, 3, 0, 8), dtype=np.float32)}
    stream = io.BytesIO()
    write_message(stream, {"op": "run"}, arrays)
    stream.seek(0)
    header, got = read_message(stream)
    assert header["op"] == "run"
    for name, value in arrays.items():
        assert got[name].shape == value.shape and np.array_equal(got[name], value), name
