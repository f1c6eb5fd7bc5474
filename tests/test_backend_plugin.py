"""A backend added from this test file alone (no change under edgetx/ or runtimes/): it declares its
capabilities, reports node placement through the session interface, and `edgetx verify`, the matrix and
`edgetx backends` treat it like a built-in one. Also: `edgetx provision` and `edgetx backends` agree on
where an environment lives."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetx.bundle import Bundle
from edgetx.cli import main
from edgetx.runtimes import (Availability, Backend, BackendSession, Capabilities, RunResult, SessionOptions,
                             list_backends, register_backend)
from edgetx.verify.parity import verify, verify_matrix


class ToySession(BackendSession):
    def __init__(self, path: Path, threads: int | None):
        import onnx
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.log_severity_level = threads or 1, 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        nodes = onnx.load(str(path), load_external_data=False).graph.node
        self._placement = {"nodes": [[n.op_type, n.name, "CPUExecutionProvider"] for n in nodes], "partitions": 1,
                           "messages": []}
        self.closed = False

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> RunResult:
        names = output_names or self.output_names
        started = time.perf_counter()
        values = self._session.run(names, feeds)
        return RunResult(dict(zip(names, values)), time.perf_counter() - started)

    @property
    def placement(self) -> dict:
        return self._placement


class ToyBackend(Backend):
    name = "toy-cpu"
    description = "onnxruntime CPU under another name, with placement (a test plugin)"
    capabilities = Capabilities(reports_placement=True, provider="CPUExecutionProvider")

    def availability(self) -> Availability:
        return Availability(True, "always, in this test")

    def create_session(self, model_path: Path, options: SessionOptions) -> ToySession:
        return ToySession(Path(model_path), options.threads)


register_backend(ToyBackend())


def test_toy_backend_verifies_a_bundle_with_placement(tiny_bundle_master):
    bundle = Bundle.load(tiny_bundle_master)
    reports = verify(bundle, backend="toy-cpu")
    assert [r.variant for r in reports] == list(bundle.variants) and all(r.passed for r in reports)
    placement = reports[0].placement
    assert placement["provider"] == "CPUExecutionProvider" and placement["on_backend"] == placement["nodes"] > 0


def test_toy_backend_in_the_cli_and_the_matrix(tiny_bundle_master):
    result = CliRunner().invoke(main, ["verify", str(tiny_bundle_master), "--backend", "toy-cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert {r["backend"] for r in json.loads(result.stdout)} == {"toy-cpu"}
    assert "toy-cpu" in list_backends()
    matrix = verify_matrix(Bundle.load(tiny_bundle_master), ["ort-cpu", "toy-cpu"])
    assert [r.passed for r in matrix if r.backend == "toy-cpu"] == [True] * len(Bundle.load(tiny_bundle_master).variants)
    result = CliRunner().invoke(main, ["backends"])
    assert result.exit_code == 0 and "toy-cpu" in result.stderr


@pytest.mark.slow
def test_provision_and_backends_agree_on_the_root(tmp_path, monkeypatch):
    """`edgetx provision web` (what `make provision-web` runs) installs where `edgetx backends` looks."""
    monkeypatch.setenv("EDGETX_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGETX_WEB_ROOT", raising=False)
    before = CliRunner().invoke(main, ["backends"])
    assert "edgetx provision web" in before.stderr
    result = CliRunner().invoke(main, ["provision", "web"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home" / "web" / "env" / "provisioned.json").is_file()
    web = list_backends()["web"]
    status = web.availability()
    assert status.available and str(tmp_path / "home" / "web") in status.reason, status.reason
    again = CliRunner().invoke(main, ["provision", "web"])
    assert again.exit_code == 0 and "nothing to do" in again.stderr
    result = CliRunner().invoke(main, ["provision", "tpu"])
    assert result.exit_code == 1 and "nothing to provision for tpu" in result.stderr
