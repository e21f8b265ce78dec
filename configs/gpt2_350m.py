"""GPT-2 medium (350M) on FineWeb-Edu 10B: the 124M recipe with GPT-3 Medium's learning rate.

GPT-3's 350M used 0.5M tokens per step and lr 3e-4. Same data as configs/gpt2_124m.py.
"""

from gpt2_jax.train_config import default_config


def get_config():
    c = default_config()
    c.data_dir = "data/fineweb_edu_10b"
    c.n_layer, c.n_head, c.n_embd, c.block_size = 24, 16, 1024, 1024
    c.batch_size = 32
    c.tokens_per_step = 2**19
    c.learning_rate, c.warmup_steps, c.max_steps = 3e-4, 715, 19_073
    c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every = 10, 250, 20, 1000
    c.hellaswag = "official"
    return c
