"""Fine-tune GPT-2 on Tiny Shakespeare (GPT-2 BPE): nanoGPT's finetune_shakespeare, sized for a CPU.

Starts from `init_from` (a hub name, an HF directory, a params directory or a training
workdir; its config.json sets the model's shape), a fresh optimizer, a small constant
learning rate (3e-5, no decay) for 200 steps of 4 x 256 tokens. Prepare the data with:

    python -m gpt2_jax.prepare --input ../shared/data/tinyshakespeare/input.txt \
        --out data/shakespeare_bpe --tokenizer gpt2 --val-fraction 0.1

Offline, point init_from at a local HF directory of GPT-2 (`save_pretrained` or a download):
`--config.init_from=path/to/gpt2`. On a GPU, raise block_size to 1024 and batch_size to fit.
"""

from gpt2_jax.train_config import default_config


def get_config():
    c = default_config()
    c.data_dir = "data/shakespeare_bpe"
    c.init_from = "gpt2"
    c.block_size = 256  # at most the model's 1024 positions; the rest are cut, as nanoGPT's crop_block_size
    c.dtype = "float32"  # XLA's CPU matmuls are no faster in bfloat16
    c.batch_size, c.tokens_per_step = 4, 4 * 256
    c.learning_rate, c.min_lr_ratio = 3e-5, 1.0  # constant: min_lr_ratio 1 leaves nothing to decay
    c.warmup_steps, c.max_steps = 0, 200
    c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every, c.keep_checkpoints = 10, 50, 10, 50, 2
    c.sample_prompt, c.num_samples, c.sample_tokens = "ROMEO:", 1, 48
    return c
