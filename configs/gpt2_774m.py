"""GPT-2 large (774M) on FineWeb-Edu 10B, params and optimizer state FSDP-sharded.

GPT-3's 760M used 0.5M tokens per step and lr 2.5e-4. fsdp=0 splits params and Adam's
moments over every device (12 GB of fp32 state for 774M); activations are recomputed in
the backward pass (remat) to fit larger micro-batches.
"""

from gpt2_jax.train_config import default_config


def get_config():
    c = default_config()
    c.data_dir = "data/fineweb_edu_10b"
    c.n_layer, c.n_head, c.n_embd, c.block_size = 36, 20, 1280, 1024
    c.batch_size = 32
    c.tokens_per_step = 2**19
    c.learning_rate, c.warmup_steps, c.max_steps = 2.5e-4, 715, 19_073
    c.fsdp, c.remat = 0, True
    c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every = 10, 250, 20, 1000
    c.hellaswag = "official"
    return c
