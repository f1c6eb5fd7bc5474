"""Worker for edgetx's own side: every variant of a bundle through the torch-free runtime API
(`edgetx.runtimes.Session`), with the same timing protocol as the peers (benchmarks/_common.py).

    .venv/bin/python benchmarks/peer_edgetx.py SPEC.json      (spec written by benchmarks/peers.py)
"""

from __future__ import annotations

import numpy as np
import onnxruntime

import edgetx
from _common import bench_decoder, bench_encoder, dir_mb, load_spec, run_variants
from edgetx.kinds.decoding import causal_feeds, decode_loop
from edgetx.runtimes import Session


class EdgetxDecoder:
    """Greedy batch-1 decoding as the Generator does it: one graph for prefill and decode, the KV cache kept bound to
    onnxruntime (in place where the graph's attention allows)."""

    def __init__(self, session: Session, positions: int):
        self.session, self.positions = session, positions

    def first(self, prompt: np.ndarray) -> int:
        self.loop = decode_loop(self.session, self.positions)
        return int(self.loop.prefill(prompt[None], logits_to_keep=1)["logits"][0, -1].argmax())

    def next(self, token: int) -> int:
        return int(self.loop.step(token)["logits"][0, -1].argmax())

    def teacher_logits(self, ids: np.ndarray) -> np.ndarray:
        return self.session.run(causal_feeds(self.session.inputs, ids[None]), ["logits"])["logits"][0]


def variant_job(spec: dict, data: dict, variant: str):
    def job() -> tuple[dict, dict]:
        session = Session(spec["bundle"], variant=variant, threads=spec["threads"], verify_hashes=False)
        size = dir_mb(session.model_path.parent)
        if spec["task"] == "minilm":
            names = [s["name"] for s in session.inputs]

            def run(ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> np.ndarray:
                feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
                return session.run({n: feeds[n] for n in names}, ["last_hidden_state"])["last_hidden_state"]

            timings, embeddings = bench_encoder(run, data, spec["warmup"], spec["repeats"])
            return {"size_mb": size, **timings}, {"embeddings": embeddings}
        side = EdgetxDecoder(session, len(data["prompt"]) + spec["new_tokens"])
        timed = bench_decoder(side, data["prompt"], spec["new_tokens"], spec["warmup"], spec["repeats"])
        return {"size_mb": size, **timed}, {"logits": side.teacher_logits(data["eval"]),
                                            "tokens": np.array(timed["tokens"])}
    return job


def main() -> None:
    spec = load_spec()
    data = dict(np.load(spec["inputs"]))
    versions = {"edgetx": getattr(edgetx, "__version__", "?"), "onnxruntime": onnxruntime.__version__}
    run_variants(spec, "edgetx", versions, [(v, variant_job(spec, data, v)) for v in spec["variants"]])


if __name__ == "__main__":
    main()
