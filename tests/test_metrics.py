"""The comparison metrics, on cases whose answers are known."""

import numpy as np
import pytest

from edgetx.verify import metrics


def test_max_abs_and_rel():
    ref = np.array([[10.0, -2.0], [0.0, 1.0]])
    got = ref + np.array([[0.0, 0.5], [0.0, 0.0]])
    assert metrics.max_abs(ref, got) == 0.5
    assert metrics.max_rel(ref, got) == pytest.approx(0.05)  # relative to max |ref| = 10
    assert metrics.max_abs(ref, np.full_like(ref, np.nan)) == np.inf


def test_cosine():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(metrics.cosine(a, np.array([[0.0, 1.0], [2.0, 2.0]])), [0.0, 1.0], atol=1e-12)
    # identical rows are 1 (zero rows too); tiny float32 vectors keep their direction; a zero row vs another is 0
    tiny = np.array([[3e-35, 4e-35], [0.0, 0.0], [0.0, 0.0]], np.float32)
    other = np.array([[4e-35, 3e-35], [0.0, 0.0], [1.0, 0.0]], np.float32)
    np.testing.assert_allclose(metrics.cosine(tiny, other), [0.96, 1.0, 0.0], atol=1e-6)


def test_kl_divergence_and_top1():
    p = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    q = np.log(np.array([[0.5, 0.5], [0.1, 0.9]]))
    kl = metrics.kl_divergence(p, q)
    assert kl[0] == pytest.approx(0.0, abs=1e-12)
    assert kl[1] == pytest.approx(0.9 * np.log(9) + 0.1 * np.log(1 / 9))
    assert metrics.top1_agreement(p, q) == 0.5


def test_token_agreement():
    assert metrics.token_agreement([1, 2, 3], [1, 2, 3]) == (3, None)
    assert metrics.token_agreement([1, 2, 3], [1, 5, 3]) == (1, 1)
    assert metrics.token_agreement([1, 2, 3], [1, 2]) == (2, 2)


def test_bits_per_token():
    uniform = np.zeros((4, 256))
    assert metrics.bits_per_token(uniform, np.array([1, 2, 3, 4])) == pytest.approx(8.0)
