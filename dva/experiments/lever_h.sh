#!/usr/bin/env bash
# issue 21, lever H (docs/policy.md): package + intent-trained trunk -> full fine-tunes with the MLP action head kept
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate
# the base: the package of 2026-12-04 (stage 11 + anchor; lever H's s30 replaced it on 2026-12-05)
mkdir -p runs/pkg_1204
for ext in safetensors json; do git show 29c8a96:dva/assets/dva_s.$ext > runs/pkg_1204/dva_s.$ext; done
python dva/experiments/intent_trunk.py 2 1500 1.0 runs/intent_k1 runs/pkg_1204/dva_s  # step 1: the trunk alone (~45 min)
python dva/experiments/intent_init.py runs/intent_k1 runs/intent_init/dva runs/pkg_1204/dva_s

. dva/experiments/recipe_h.sh
finetune() {  # INIT OUT: 300 steps of G's recipe with the head on expert data, then the open-loop metric
  train_h "$1" "$2" expert=1
  python -m dva.openloop --checkpoint "runs/$2/ckpt" --data data/expert_dev --out "runs/ol_$2.json" --threads 2 --quiet
}

finetune runs/intent_init/dva s28   # H, 300 steps
python -m dva.probe --checkpoint runs/s28/ckpt --train data/expert --test data/expert_dev --out runs/probe_s28.json --quiet
finetune runs/s28/ckpt s29          # H, 600 steps
python -m dva.eval --policy dva --checkpoint runs/s29/ckpt --seeds dev --workers 2 --out runs/eval_dev_s29.json
finetune runs/s29/ckpt s30          # H, 900 steps (open loop 20.0 px, dev 0.419)
python -m dva.eval --policy dva --checkpoint runs/s30/ckpt --seeds dev --workers 2 --out runs/eval_dev_s30.json
# continued on 2026-12-05 (runs/chain.sh of that session): 300-step segments, dev eval every other;
# that session stopped it after s35 (dev 0.570, flat vs s34); the next one started s36 and stopped it
# after 40 steps for dagger_h.sh (DAgger from s35, whose s38r replaced s34 as the package)
prev=s30
for i in 31 32 33 34 35 36; do
  finetune runs/$prev/ckpt s$i
  if [ $((i % 2)) -eq 0 ]; then
    python -m dva.eval --policy dva --checkpoint runs/s$i/ckpt --seeds dev --workers 2 --out runs/eval_dev_s$i.json
  fi
  prev=s$i
done
