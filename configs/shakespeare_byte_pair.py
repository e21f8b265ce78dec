"""Bytes against BPE on Tiny Shakespeare, the byte half (the other, and what differs: shakespeare_bpe_pair.py).

213 bytes of context hold the text of 64 GPT-2 BPE tokens (3.32 bytes per token on this train
split); 1,509 steps of 4 x 213 bytes x 6.22 MFLOPs per byte = 8.003e12 training FLOPs, the BPE
half's budget. Prepared with the BPE half's split, in bytes (compare_tokenizers.py does this):

    python -m gpt2_jax.prepare --input ../shared/data/tinyshakespeare/input.txt \
        --out data/shakespeare_pair_byte --tokenizer byte --val-fraction 0.093435
"""

from gpt2_jax.train_config import default_config


def get_config():
    c = default_config()
    c.data_dir = "data/shakespeare_pair_byte"
    c.n_layer, c.n_head, c.n_embd, c.block_size = 4, 4, 128, 213
    c.vocab_pad_multiple = 1  # 257 byte ids: nothing to gain
    c.dtype = "float32"
    c.batch_size, c.tokens_per_step = 4, 4 * 213
    c.learning_rate, c.min_lr_ratio, c.b2 = 1e-3, 0.1, 0.99
    c.max_steps = 1509  # 1,509 x 852 bytes x 6.22 MFLOPs per byte = 8.003e12 FLOPs
    c.warmup_steps = 75  # 5% of the steps
    c.log_every, c.eval_every, c.eval_batches = 85, 170, 30  # 120 windows: 25,560 bytes of val text
    c.checkpoint_every = 400
    c.num_samples = 0
    return c
