"""The onnxruntime-genai worker: loads one converted folder (genai_config.json + model + tokenizer) and runs token
sequences through genai's own Generator on request over stdin/stdout (the `wire` format).

Run by the "genai" backend with the Python of the venv `edgetx provision genai` made (onnxruntime-genai from PyPI);
it imports nothing from edgetx but `wire.py` from runtimes/worker/.

Requests beside load/close:
- {"op": "append", "max_length": N, tensors input_ids (1, n)}: append to the current sequence (a new one when
  there is none) and return the logits of the appended positions — genai runs the graph, keeps the KV cache;
- {"op": "rewind", "length": L}: keep the first L positions (genai's rewind_to);
- {"op": "reset"}: forget the sequence;
- {"op": "encode", "texts": [...]}: token ids of each text by genai's tokenizer;
- {"op": "generate", "new_tokens": N, tensors prompt (n,)}: greedy generation of N tokens in genai's own loop
  (search and KV cache in C++), timed here: the prompt to the first token, then each step.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "worker"))

import numpy as np  # noqa: E402

import wire  # noqa: E402  (runtimes/worker/wire.py, found through the path above)


class Runner:
    def __init__(self, request: dict):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(request["model"])
        config.clear_providers()  # CPU
        options = {"inter_op_num_threads": 1}
        if request.get("threads"):
            options["intra_op_num_threads"] = int(request["threads"])
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)
        self.generator, self.length = None, 0

    def _new(self, max_length: int, fixed: bool = False):
        params = self.og.GeneratorParams(self.model)
        # min_length = max_length: a timed run generates exactly its tokens, an end-of-text token does not stop it
        params.set_search_options(do_sample=False, max_length=max_length, batch_size=1,
                                  min_length=max_length if fixed else 0)
        self.generator, self.length = self.og.Generator(self.model, params), 0
        return self.generator

    def append(self, ids: np.ndarray, max_length: int) -> np.ndarray:
        if ids.ndim != 2 or ids.shape[0] != 1:
            raise ValueError(f"genai's loop takes one row of new tokens; got input_ids of shape {list(ids.shape)}")
        generator = self.generator or self._new(max_length)
        generator.append_tokens(ids.astype(np.int32))
        self.length += ids.shape[1]
        logits = np.asarray(generator.get_output("logits"), dtype=np.float32)
        return logits.reshape(1, -1, logits.shape[-1])[:, -ids.shape[1]:]

    def rewind(self, length: int) -> None:
        if self.generator is not None:
            self.generator.rewind_to(length)
            self.length = length

    def generate(self, prompt: np.ndarray, new_tokens: int) -> dict:
        generator = self._new(len(prompt) + new_tokens, fixed=True)
        started = time.perf_counter()
        generator.append_tokens(prompt.astype(np.int32)[None])
        generator.generate_next_token()  # picks from the prompt's logits
        tokens = [int(generator.get_next_tokens()[0])]
        first = time.perf_counter() - started
        steps = []
        for _ in range(new_tokens - 1):
            started = time.perf_counter()
            generator.generate_next_token()  # runs the last token through the graph and picks the next
            tokens.append(int(generator.get_next_tokens()[0]))
            steps.append(time.perf_counter() - started)
        self.generator = None
        return {"tokens": tokens, "first_seconds": first, "step_seconds": steps}


def serve(stdin, stdout) -> None:
    state = {}

    def handle(request: dict, arrays: dict) -> tuple[dict, dict]:
        op, runner = request["op"], state.get("runner")
        if op == "load":
            import onnxruntime
            import onnxruntime_genai as og

            state["runner"] = Runner(request)
            return {"outputs": ["logits"], "runtime": f"onnxruntime-genai {og.__version__} "
                                                      f"(onnxruntime {onnxruntime.__version__})"}, {}
        if runner is None:
            raise RuntimeError(f"{op} before load")
        if op == "append":
            started = time.perf_counter()
            logits = runner.append(arrays["input_ids"], int(request["max_length"]))
            return {"seconds": time.perf_counter() - started, "length": runner.length}, {"logits": logits}
        if op == "rewind":
            runner.rewind(int(request["length"]))
            return {}, {}
        if op == "reset":
            runner.generator, runner.length = None, 0
            return {}, {}
        if op == "encode":  # genai's own tokenizer (onnxruntime-extensions) on the folder's tokenizer files
            tokenizer = runner.og.Tokenizer(runner.model)
            return {"ids": [[int(i) for i in tokenizer.encode(text)] for text in request["texts"]]}, {}
        if op == "generate":
            return runner.generate(arrays["prompt"], int(request["new_tokens"])), {}
        raise ValueError(f"unknown op {op!r}")

    wire.serve(stdin, stdout, handle)


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
