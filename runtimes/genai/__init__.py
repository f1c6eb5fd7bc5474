"""The "genai" backend: a variant converted for onnxruntime-genai (`edgetx convert BUNDLE --to genai`) run by genai's
own runtime — what C, C++, C#, Java and Android apps embed for LLMs on onnxruntime.

genai owns the generation loop: it feeds the attention mask and positions, keeps the KV cache and picks tokens in
C++. So its sessions do not take single graph runs (Capabilities.graph_runs is False): a token sequence goes through
the cache genai keeps (`bind_cache`: append tokens, read their logits, rewind), and `own_loop` times greedy
generation in genai's loop. It runs in `worker.py` inside the venv its installer (provision.py, `edgetx provision
genai`) puts under ROOT/env: onnxruntime-genai from PyPI with the host's onnxruntime version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetx.errors import BackendError
from edgetx.runtimes.backend import (CacheBinding, Capabilities, LoopTimings, RunResult, SessionOptions,
                                     register_backend)
from edgetx.runtimes.environment import ProvisionedBackend
from edgetx.runtimes.remote import WorkerSession, worker_environment

GENAI_FORMAT = "genai"  # a variant's formats["genai"]: its genai_config.json, beside the model and the tokenizer
WORKER = Path(__file__).resolve().parent / "worker.py"


class GenaiBinding(CacheBinding):
    """The KV cache genai keeps for one sequence: each run appends its input_ids and returns their logits."""

    def __init__(self, session: "GenaiSession", max_length: int):
        self.session, self.max_length, self.past = session, max_length, 0
        session._request({"op": "reset"})

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> RunResult:
        ids = np.asarray(feeds["input_ids"])
        mask = feeds.get("attention_mask")
        if ids.ndim != 2 or ids.shape[0] != 1 or (mask is not None and not np.all(mask == 1)):
            raise BackendError(f"{self.session.label}: genai's loop runs one unpadded row at a time (input_ids of "
                               f"shape {list(ids.shape)}); batches and padding run on ort-cpu")
        if self.past + ids.shape[1] > self.max_length:
            raise BackendError(f"{self.session.label}: {self.past + ids.shape[1]} positions exceed the "
                               f"{self.max_length} this sequence was opened with")
        reply, outputs = self.session._request({"op": "append", "max_length": self.max_length},
                                               {"input_ids": ids.astype(np.int64)})
        self.past = int(reply["length"])
        logits = outputs["logits"]
        keep = int(np.asarray(feeds.get("logits_to_keep", 0)))
        return RunResult({"logits": logits[:, -keep:] if keep else logits}, float(reply["seconds"]))

    def truncate(self, length: int) -> None:
        if length < self.past:
            self.session._request({"op": "rewind", "length": int(length)})
            self.past = length


class GenaiSession(WorkerSession):
    def __init__(self, argv: list[str], folder: Path, options: SessionOptions, env: dict[str, str],
                 context_length: int | None):
        super().__init__(argv, folder, options, label=f"genai ({folder.name})", env=env)
        self.context_length = context_length

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> RunResult:
        raise BackendError(f"{self.label}: onnxruntime-genai runs token sequences through its own KV cache, not single "
                           "graph runs; use the Generator (or Session.bind_cache), or run the variant on ort-cpu")

    def bind_cache(self, cache: dict, capacity: int | None = None) -> GenaiBinding:
        if next(iter(cache.values())).shape[0] != 1:
            raise BackendError(f"{self.label}: genai's loop runs one row at a time here; batches run on ort-cpu")
        return GenaiBinding(self, capacity or self.context_length or 2048)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text by genai's own tokenizer (what a genai app gets from og.Tokenizer)."""
        reply, _ = self._request({"op": "encode", "texts": list(texts)})
        return reply["ids"]

    def own_loop(self, prompt: np.ndarray, new_tokens: int) -> LoopTimings:
        ids = np.asarray(prompt, dtype=np.int64).reshape(-1)
        reply, _ = self._request({"op": "generate", "new_tokens": int(new_tokens)}, {"prompt": ids})
        return LoopTimings([int(t) for t in reply["tokens"]], float(reply["first_seconds"]),
                           [float(s) for s in reply["step_seconds"]])


class GenaiBackend(ProvisionedBackend):
    name = "genai"
    description = "onnxruntime-genai's runtime and generation loop (CPU), on folders `edgetx convert --to genai` wrote"
    capabilities = Capabilities(model_format=GENAI_FORMAT, graph_runs=False, kinds=("causal-lm",))
    environment = "genai"
    installer = "edgetx.runtimes.genai.provision"

    def required_files(self, env: Path, stamp: dict) -> list[Path]:
        return [env / stamp.get("python", "venv/bin/python")]

    def describe(self, stamp: dict) -> str:
        return f"onnxruntime-genai {stamp.get('onnxruntime-genai', '?')} (onnxruntime {stamp.get('onnxruntime', '?')})"

    def create_session(self, model_path: Path, options: SessionOptions) -> GenaiSession:
        env, stamp = self.environment_dir()
        config = Path(model_path)
        if config.name != "genai_config.json" or not config.is_file():
            raise BackendError(f"genai loads a folder's genai_config.json; {config} is not one "
                               "(edgetx convert BUNDLE --to genai writes it)")
        import json

        context = json.loads(config.read_text()).get("model", {}).get("context_length")
        argv = [str(env / stamp.get("python", "venv/bin/python")), str(WORKER)]
        return GenaiSession(argv, config.parent, options, worker_environment(), context)


register_backend(GenaiBackend())
