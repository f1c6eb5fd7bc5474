"""Train the reference GPT on the standard library's sources, deterministically, on CPU.

    python -m edgetx.models.train --out models/checkpoint

Writes config.json, model.safetensors and train_log.json (validation bits/byte, time).
Same seed, same thread count, same machine -> same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from edgetx.models.data import VALIDATION_MODULES, load_split
from edgetx.models.model import GPT, GPTConfig

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoint"


def load_checkpoint(path: Path = DEFAULT_CHECKPOINT) -> GPT:
    """A trained GPT from a folder with config.json + model.safetensors (no pickle involved)."""
    path = Path(path)
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} is missing: an edgetx checkpoint folder holds "
                                    "config.json and model.safetensors")
    model = GPT(GPTConfig.load(path / "config.json"))
    load_model(model, path / "model.safetensors")
    return model.eval()


@torch.no_grad()
def bits_per_byte(model: GPT, data: np.ndarray, seq_len: int, max_windows: int = 64) -> float:
    """Mean next-byte cross-entropy in bits over evenly spaced, non-overlapping windows."""
    model.eval()
    n_windows = min(max_windows, (len(data) - 1) // seq_len)
    starts = np.linspace(0, len(data) - seq_len - 1, n_windows).astype(np.int64)
    total = 0.0
    for batch in np.array_split(starts, max(1, n_windows // 16)):
        x = torch.from_numpy(np.stack([data[s : s + seq_len] for s in batch]).astype(np.int64))
        y = torch.from_numpy(np.stack([data[s + 1 : s + 1 + seq_len] for s in batch]).astype(np.int64))
        logits, _ = model(x)
        total += F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
    model.train()
    return total / (n_windows * seq_len) / math.log(2)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    train_data, val_data = load_split("train"), load_split("val")
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                       block_size=args.block_size or args.seq_len)
    model = GPT(config)
    bf16 = args.bf16 if args.bf16 is not None else torch.backends.mkldnn.is_available()
    print(f"{model.num_parameters() / 1e6:.2f}M parameters; train {len(train_data) / 1e6:.1f} MB, "
          f"val {len(val_data) / 1e6:.2f} MB ({', '.join(VALIDATION_MODULES)}); bf16 autocast: {bf16}")
    untrained_bpb = bits_per_byte(model, val_data, args.seq_len)
    print(f"untrained val bits/byte {untrained_bpb:.3f}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    history, started = [], time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        starts = rng.integers(0, len(train_data) - args.seq_len - 1, args.batch_size)
        x = torch.from_numpy(np.stack([train_data[s : s + args.seq_len] for s in starts]).astype(np.int64))
        y = torch.from_numpy(np.stack([train_data[s + 1 : s + 1 + args.seq_len] for s in starts]).astype(np.int64))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, _ = model(x)
        loss = F.cross_entropy(logits.float().view(-1, config.vocab_size), y.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps - 1:
            val = bits_per_byte(model, val_data, args.seq_len, max_windows=32)
            elapsed = time.time() - started
            history.append({"step": step, "train_loss": round(loss.item(), 4), "val_bpb": round(val, 4),
                            "seconds": round(elapsed, 1)})
            print(f"step {step:5d}  train loss {loss.item():.3f}  val bits/byte {val:.3f}  {elapsed:6.0f}s",
                  flush=True)
    train_seconds = time.time() - started
    final_bpb = bits_per_byte(model, val_data, args.seq_len, max_windows=256)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / "config.json")
    save_model(model, str(out / "model.safetensors"))
    log = {
        "parameters": model.num_parameters(),
        "val_bits_per_byte": round(final_bpb, 4),
        "untrained_val_bits_per_byte": round(untrained_bpb, 4),
        "train_seconds": round(train_seconds, 1),
        "tokens_seen": args.steps * args.batch_size * args.seq_len,
        "train_bytes": int(len(train_data)),
        "val_bytes": int(len(val_data)),
        "validation_modules": list(VALIDATION_MODULES),
        "bf16_autocast": bf16,
        "args": vars(args),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine()},
        "history": history,
    }
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(f"final val bits/byte {final_bpb:.3f} (untrained {untrained_bpb:.3f}); "
          f"trained in {train_seconds / 60:.1f} min; wrote {out}")
    return log


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_CHECKPOINT), help="checkpoint folder to write")
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--block-size", type=int, default=None,
                   help="longest context the checkpoint declares (default: --seq-len, the length it trained on)")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast for matmuls (default: on where oneDNN is available)")
    train(p.parse_args(argv))


if __name__ == "__main__":
    main()
