# Lever H's 300-step fine-tune, the one recipe lever_h.sh and dagger_h.sh share (source this file).
train_h() {  # INIT OUT MIX [ARGS...]: 300 steps from INIT on the --mix phase MIX; ARGS: more --data sources
  local init=$1 out=$2 mix=$3; shift 3
  python -m dva.train --preset s --model both --data random=data/random --data goal=data/goal --data expert=data/expert \
    "$@" --mix "0:$mix" --seq-len 9 --batch-size 8 --val-every 100 --val-batch 8 --ckpt-every 25 --log-every 10 \
    --lr 3e-4 --warmup 50 --self-forcing-depth 1 --action-dropout 0.5 --threads 2 \
    --init "$init" --steps 300 --policy-loss 1 --prev-action --action-aux 1.0 --out "runs/$out"
}
