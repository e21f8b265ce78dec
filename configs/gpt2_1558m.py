"""GPT-2 XL (1.5B) on FineWeb-Edu 10B, FSDP over every device with remat.

GPT-3's 1.3B used 1M tokens per step and lr 2e-4; the step count keeps one pass over 10B.
"""

from gpt2_jax.train_config import default_config


def get_config():
    c = default_config()
    c.data_dir = "data/fineweb_edu_10b"
    c.n_layer, c.n_head, c.n_embd, c.block_size = 48, 25, 1600, 1024
    c.batch_size = 32
    c.tokens_per_step = 2**20
    c.learning_rate, c.warmup_steps, c.max_steps = 2e-4, 357, 9_537
    c.fsdp, c.remat = 0, True
    c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every = 10, 250, 20, 500
    c.hellaswag = "official"
    return c
