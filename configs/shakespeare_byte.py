"""The quickstart: nanoGPT's CPU recipe for Shakespeare, on raw bytes.

A 4-layer, 4-head, 128-wide GPT-2 with a 64-byte context, 12 windows per step, 2,000 steps
of AdamW (lr 1e-3, beta2 0.99, 100 warmup steps, cosine to 1e-4), no dropout, weight decay
0.1, 90/10 train/val split, one CPU device (see cpu_devices in train_config.py). Prepare the data with:

    python -m gpt2_jax.prepare --input ../shared/data/tinyshakespeare/input.txt \
        --out data/shakespeare_byte --tokenizer byte --val-fraction 0.1
"""

from gpt2_jax.train_config import default_config


def get_config():
    c = default_config()
    c.data_dir = "data/shakespeare_byte"
    c.n_layer, c.n_head, c.n_embd, c.block_size = 4, 4, 128, 64
    c.vocab_pad_multiple = 1  # 257 byte ids: nothing to gain
    c.dtype = "float32"  # XLA's CPU matmuls are no faster in bfloat16
    c.tokens_per_step = 12 * 64  # 12 windows per step...
    c.batch_size = 6  # ...as 2 micro-batches of 6: each one's activations stay in a core's cache (26 vs 38 ms a step)
    c.learning_rate, c.min_lr_ratio = 1e-3, 0.1
    c.warmup_steps, c.max_steps = 100, 2000
    c.b2 = 0.99  # the small batch makes the gradient noisy; a shorter second-moment memory helps
    c.log_every = 100
    c.eval_every, c.eval_batches = 250, 40  # 240 validation windows
    c.checkpoint_every = 100  # a crash of any kind costs at most 5% of the run
    c.num_samples = 0  # the quickstart samples once at the end (python -m gpt2_jax.sample)
    return c
