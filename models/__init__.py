"""The reference transformer (a pre-norm GPT over bytes), its corpus, training script and trained checkpoint."""
