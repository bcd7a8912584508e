#!/usr/bin/env bash
# issue 21, lever H + DAgger (docs/policy.md, 2026-12-05): the expert takes over from the states the
# current DVA visits on training seeds (700000..), and the fine-tune mixes those recovery episodes
# with the expert's. Needs lever_h.sh's runs/s34 (the package before s38r) and runs/s35, and
# data/recovery (the 12-04 package's states, docs/history.md lever C).
set -e
cd "$(dirname "$0")/../.." && . .venv/bin/activate

visit_and_recover() {  # CHECKPOINT SEEDS COLLECT_SEED NAME: its visited states -> data/recovery_NAME
  python -m dva.eval --policy dva --checkpoint "$1" --seeds "$2" --workers 2 --quiet \
    --states-out "runs/visited_$4.npz" --states-every 10 --out "runs/eval_train_$4.json"
  n=$(python -c "import numpy as np; print(len(np.load('runs/visited_$4.npz')['states']))")
  python -m dva.collect --policy expert --start-states "runs/visited_$4.npz" --episodes "$n" --seed "$3" \
    --workers 2 --quiet --out "data/recovery_$4"
}

. dva/experiments/recipe_h.sh
finetune() {  # INIT OUT MIX DATA...: 300 steps of lever H's recipe on MIX, then the dev seeds and the open loop
  local out=$2
  train_h "$@"
  python -m dva.eval --policy dva --checkpoint "runs/$out/ckpt" --seeds dev --workers 2 --quiet --out "runs/eval_dev_$out.json"
  python -m dva.openloop --checkpoint "runs/$out/ckpt" --data data/expert_dev --out "runs/ol_$out.json" --threads 2 --quiet
}

# round 1: the package's (s34's) states, 1,427 recovery episodes; 300 steps from s35
visit_and_recover runs/s34/ckpt 700000:700050 810000 s34
finetune runs/s35/ckpt s36r expert=0.5,recovery=0.2,recovery_s34=0.3 \
  --data recovery=data/recovery --data recovery_s34=data/recovery_s34
# round 2: s36r's states on new training seeds; 300 steps from s36r
visit_and_recover runs/s36r/ckpt 700050:700090 820000 s36r
finetune runs/s36r/ckpt s37r expert=0.5,recovery=0.1,recovery_s34=0.2,recovery_s36r=0.2 \
  --data recovery=data/recovery --data recovery_s34=data/recovery_s34 --data recovery_s36r=data/recovery_s36r
# round 3: s37r's states on new training seeds; 300 steps from s37r
visit_and_recover runs/s37r/ckpt 700090:700130 830000 s37r
finetune runs/s37r/ckpt s38r expert=0.5,recovery=0.05,recovery_s34=0.15,recovery_s36r=0.15,recovery_s37r=0.15 \
  --data recovery=data/recovery --data recovery_s34=data/recovery_s34 --data recovery_s36r=data/recovery_s36r \
  --data recovery_s37r=data/recovery_s37r
# round 4 (stop 29): s38r's states; 300 steps from s38r
visit_and_recover runs/s38r/ckpt 700130:700170 840000 s38r
R="--data recovery_s34=data/recovery_s34 --data recovery_s36r=data/recovery_s36r --data recovery_s37r=data/recovery_s37r --data recovery_s38r=data/recovery_s38r"
finetune runs/s38r/ckpt s39r expert=0.5,recovery_s34=0.1,recovery_s36r=0.1,recovery_s37r=0.15,recovery_s38r=0.15 $R
# round 5: s39r's states; 300 steps from s39r (rounds 4 and 5 left the dev score flat: docs/policy.md)
visit_and_recover runs/s39r/ckpt 700170:700210 850000 s39r
finetune runs/s39r/ckpt s40r expert=0.5,recovery_s34=0.05,recovery_s36r=0.1,recovery_s37r=0.1,recovery_s38r=0.125,recovery_s39r=0.125 \
  $R --data recovery_s39r=data/recovery_s39r
# the approach from rest (stop 29; shipped as the package): s40r's start and recovery data, with 0.15 of
# the mix moved from expert to expert episodes cut to their first 20 steps (docs/policy.md, "far starts")
python -m dva.collect --policy expert --episodes 3000 --seed 300000 --max-steps 20 --workers 2 --quiet --out data/approach
A=expert=0.35,approach=0.15,recovery_s34=0.05,recovery_s36r=0.1,recovery_s37r=0.1,recovery_s38r=0.125,recovery_s39r=0.125
RA="--data approach=data/approach $R --data recovery_s39r=data/recovery_s39r"
finetune runs/s39r/ckpt s40a $A $RA
# 300 more steps from s40a on the same mix (s41a; not shipped: dev score flat, success 24% -> 44%)
finetune runs/s40a/ckpt s41a $A $RA
# round 6 on the approach mix (stop 30): s41a's states -> recovery_s41a (988 episodes), 300 steps from s41a
# (s42r: dev score flat, success and parking worse than s41a; not shipped)
visit_and_recover runs/s41a/ckpt 700210:700250 860000 s41a
finetune runs/s41a/ckpt s42r expert=0.3,approach=0.15,recovery_s34=0.05,recovery_s36r=0.1,recovery_s37r=0.1,recovery_s38r=0.1,recovery_s39r=0.1,recovery_s41a=0.1 \
  $RA --data recovery_s41a=data/recovery_s41a
# 300 steps from s41a with the approach source at 0.25 (from expert's share)
finetune runs/s41a/ckpt s42a expert=0.25,approach=0.25,recovery_s34=0.05,recovery_s36r=0.1,recovery_s37r=0.1,recovery_s38r=0.125,recovery_s39r=0.125 $RA
# stop 31: the five recovery datasets above were lost with their machine, and re-making them needs the
# intermediate checkpoints; a DAgger round on the package itself is what any machine can make from the
# repo (1,100 episodes, 3.6 MiB; docs/gpu.md carries it to a GPU window)
visit_and_recover dva/assets/dva_s 700250:700290 870000 pkg
