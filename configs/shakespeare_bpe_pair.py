"""Bytes against BPE on Tiny Shakespeare, the GPT-2 BPE half (the other: shakespeare_byte_pair.py).

The two configs differ only in the tokenizer and what follows from it: the vocabulary (50,257
here, 257 there), the context (64 tokens here; 213 bytes there, as GPT-2 BPE averages 3.32
bytes per token on this train split: the same text per window), the step count (equal
training FLOPs: 8.0e12, counted by flops.train_flops_per_token) and the evaluation's window
count (the same ~25 KB of val text). The model (4 layers, 4 heads, 128 wide), small steps (4
windows, as the quickstart's 12 x 64 bytes), AdamW and its schedule's shape are the quickstart's.
Both datasets split the same 1,011,177 bytes for training from the same 104,217 for validation;
`python scripts/compare_tokenizers.py` prepares them, runs both and writes docs/bytes_vs_bpe.md.
By hand:

    python -m gpt2_jax.prepare --input ../shared/data/tinyshakespeare/input.txt \
        --out data/shakespeare_pair_bpe --tokenizer gpt2 --val-fraction 0.1
"""

from gpt2_jax.train_config import default_config


def get_config():
    c = default_config()
    c.data_dir = "data/shakespeare_pair_bpe"
    c.n_layer, c.n_head, c.n_embd, c.block_size = 4, 4, 128, 64
    c.vocab_pad_multiple = 64  # 50,257 -> 50,304 rows: aligned matmuls, the same losses
    c.dtype = "float32"  # XLA's CPU matmuls are no faster in bfloat16
    c.batch_size, c.tokens_per_step = 4, 4 * 64
    c.learning_rate, c.min_lr_ratio, c.b2 = 1e-3, 0.1, 0.99
    c.max_steps = 715  # 715 x 256 tokens x 43.71 MFLOPs per token = 8.000e12 FLOPs
    c.warmup_steps = 36  # 5% of the steps
    c.log_every, c.eval_every, c.eval_batches = 40, 80, 32  # 128 windows: 8,192 tokens, ~25 KB of val text
    c.checkpoint_every = 200
    c.num_samples = 0
    return c
