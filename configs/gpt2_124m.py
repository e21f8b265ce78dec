"""GPT-2 124M on FineWeb-Edu 10B: build-nanogpt's run (which matched GPT-2 124M's HellaSwag).

2**19 = 524,288 tokens per step for 19,073 steps (one pass over 10B tokens), max lr 6e-4 with
715 warmup steps and cosine decay to 10%, AdamW (0.9, 0.95), weight decay 0.1, clip 1.0,
bf16 compute. Prepare the data (where a network exists) with:

    python -m gpt2_jax.prepare --input hf:HuggingFaceFW/fineweb-edu:sample-10BT \
        --out data/fineweb_edu_10b --tokenizer gpt2 --val-fraction 0.01

batch_size is the micro-batch over all devices: 64 suits 8 GPUs of 80 GB; lower it (the
accumulation grows to keep tokens_per_step) on fewer or smaller devices.
"""

from gpt2_jax.train_config import default_config


def get_config():
    c = default_config()
    c.data_dir = "data/fineweb_edu_10b"
    c.n_layer, c.n_head, c.n_embd, c.block_size = 12, 12, 768, 1024
    c.batch_size = 64
    c.tokens_per_step = 2**19
    c.learning_rate, c.warmup_steps, c.max_steps = 6e-4, 715, 19_073
    c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every = 10, 250, 20, 1000
    c.hellaswag = "official"  # hellaswag_val.jsonl, downloaded once where a network exists
    return c
