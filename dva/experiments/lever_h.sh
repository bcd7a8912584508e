#!/usr/bin/env bash
# issue 21, lever H (docs/policy.md): package + intent-trained trunk -> full fine-tune with the MLP action head kept
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
python dva/experiments/intent_init.py runs/intent_k1.pt runs/intent_init/dva  # (after: python dva/experiments/intent_trunk.py 2 1500 1.0 runs/intent_k1)
python -m dva.train --preset s --model both --data random=data/random --data goal=data/goal --data expert=data/expert \
  --mix 0:expert=1 --seq-len 9 --batch-size 8 --val-every 100 --val-batch 8 --ckpt-every 25 --log-every 10 \
  --lr 3e-4 --warmup 50 --self-forcing-depth 1 --action-dropout 0.5 --threads 2 \
  --init runs/intent_init/dva --steps 300 --policy-loss 1 --prev-action --action-aux 1.0 --out runs/s28
python -m dva.openloop --checkpoint runs/s28/ckpt --data data/expert_dev --out runs/ol_s28.json --threads 2 --quiet  # H, 300 steps
python -m dva.probe --checkpoint runs/s28/ckpt --train data/expert --test data/expert_dev --out runs/probe_s28.json --quiet
# H, 600 steps: 300 more from the 300-step run, same recipe (the selected one: docs/policy.md)
python -m dva.train --preset s --model both --data random=data/random --data goal=data/goal --data expert=data/expert \
  --mix 0:expert=1 --seq-len 9 --batch-size 8 --val-every 100 --val-batch 8 --ckpt-every 25 --log-every 10 \
  --lr 3e-4 --warmup 50 --self-forcing-depth 1 --action-dropout 0.5 --threads 2 \
  --init runs/s28/ckpt --steps 300 --policy-loss 1 --prev-action --action-aux 1.0 --out runs/s29
python -m dva.openloop --checkpoint runs/s29/ckpt --data data/expert_dev --out runs/ol_s29.json --threads 2 --quiet
python -m dva.eval --policy dva --checkpoint runs/s29/ckpt --seeds dev --workers 2 --out runs/eval_dev_s29.json
# H, 900 steps: the same once more (open loop 20.0 px; docs/policy.md)
python -m dva.train --preset s --model both --data random=data/random --data goal=data/goal --data expert=data/expert \
  --mix 0:expert=1 --seq-len 9 --batch-size 8 --val-every 100 --val-batch 8 --ckpt-every 25 --log-every 10 \
  --lr 3e-4 --warmup 50 --self-forcing-depth 1 --action-dropout 0.5 --threads 2 \
  --init runs/s29/ckpt --steps 300 --policy-loss 1 --prev-action --action-aux 1.0 --out runs/s30
python -m dva.openloop --checkpoint runs/s30/ckpt --data data/expert_dev --out runs/ol_s30.json --threads 2 --quiet
python -m dva.eval --policy dva --checkpoint runs/s30/ckpt --seeds dev --workers 2 --out runs/eval_dev_s30.json
