#!/usr/bin/env bash
# The quickstart on a fresh machine: install, prepare Tiny Shakespeare as bytes, train the small model (nanoGPT's
# CPU recipe: 65-99 s of training on 2 quiet cores, by CPU, more under load; ~2.5-3.5 minutes with the install),
# sample from it (training draws its curves to runs/shakespeare_byte/loss.png).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .
input=../shared/data/tinyshakespeare/input.txt
if [ ! -f "$input" ]; then  # no shared data: download it (needs a network)
  input=data/tinyshakespeare.txt
  mkdir -p data
  [ -f "$input" ] || curl -fsSL -o "$input" https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
fi
python -m gpt2_jax.prepare --input "$input" --out data/shakespeare_byte --tokenizer byte --val-fraction 0.1
python -m gpt2_jax.train --config=configs/shakespeare_byte.py --workdir=runs/shakespeare_byte
python -m gpt2_jax.sample --model runs/shakespeare_byte --prompt "ROMEO:" --max-new-tokens 500 --top-k 50 --seed 1
