"""GPT-2 124M's recipe on raw bytes of FineWeb-Edu, at the BPE run's FLOPs per byte and bytes per step.

configs/gpt2_124m.py is the BPE half. GPT-2 BPE averages ~4.67 bytes per token on FineWeb-Edu
(nanochat's tok_eval, GPT-2 column, fwe-train; measure yours), so the BPE run trains on
2**19 x 4.67 = 2.45M bytes per step at 854.4M FLOPs per token = 183.0M FLOPs per byte. A byte
model cannot keep the 124M body at that price: 12 x 768 costs 511M FLOPs per byte in its
weights alone, before any attention. At the same cost per byte and the same 12 layers and 1,024
positions, the width halves: 12 x 384 (21.2M params without embeddings, against 85.0M) reads
1,024 bytes (~220 BPE tokens of text, against ~4,800 bytes) for 184.6M FLOPs per byte. 2,392
windows of 1,024 bytes per step = 2.449M bytes; the same 19,073 steps read the same ~46.7B
bytes, for the same training FLOPs (+0.9%). Everything else is the BPE recipe's. The
alternatives and what they cost: docs/bytes_vs_bpe.md. Not run here. Prepare (~93 GB of uint16):

    python -m gpt2_jax.prepare --input hf:HuggingFaceFW/fineweb-edu:sample-10BT \
        --out data/fineweb_edu_10b_byte --tokenizer byte --val-fraction 0.011

(0.011 > the BPE data's 0.01, so that this train split ends before the BPE val split begins);
compare both on the same bytes with
`python -m gpt2_jax.evaluate --model RUN_BPE --model RUN_BYTE --tasks val_loss --data-dir data/fineweb_edu_10b`.
"""

from gpt2_jax.train_config import default_config

BYTES_PER_BPE_TOKEN = 4.67  # GPT-2 BPE on FineWeb-Edu, nanochat's tok_eval report (fwe-train)


def get_config():
    c = default_config()
    c.data_dir = "data/fineweb_edu_10b_byte"
    c.n_layer, c.n_head, c.n_embd, c.block_size = 12, 6, 384, 1024
    c.batch_size = 104  # 13 windows per device on 8 GPUs, 23 micro-batches per step
    c.tokens_per_step = 2392 * 1024  # 2,449,408 bytes: 2**19 BPE tokens x 4.67
    c.learning_rate, c.warmup_steps, c.max_steps = 6e-4, 715, 19_073
    c.log_every, c.eval_every, c.checkpoint_every = 10, 250, 1000
    c.eval_batches = 58  # 6.18M bytes of val text, as the BPE run's 20 x 64 x 1024 tokens
    c.hellaswag = "official"
    return c
