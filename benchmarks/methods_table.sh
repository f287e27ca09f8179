#!/usr/bin/env bash
# The six methods at one target and seed, each with its paper's own fine-tuning recipe and with
# the common KD recipe (RESULTS.md, "Six methods at 50% and 30%"). Resumable: run it again.
#
#   bash benchmarks/methods_table.sh SEED TARGET [ROOT]      e.g. 0 0.5 runs/methods39
#   python -m benchmarks.methods_table --root=ROOT            the tables, once runs have finished
#
# ROOT/sSEED_tTARGET/paper: teacher, the TAS/PaS/L1/FPGM searches and extractions, and the runs
#   tas-kd (TAS's own: KD from scratch), pas-ce (released), l1-ce (Li et al.), fpgm-ce (He et
#   al., pre-trained setting), uniform-ce, random-ce (the distill recipe).
# ROOT/sSEED_tTARGET/common: the same teacher, searches and tas-kd (linked), every other pruned
#   network fine-tuned with config.distill + KD: pas-kd, l1-kd, fpgm-kd, uniform-kd, random-kd.
set -euo pipefail
seed=$1; target=$2; root=${3:-runs/methods39}
dir=$root/s${seed}_t${target}
common_flags=(--config=configs/demo_settled.py --config.seed="$seed"
  --config.distill.baseline_seed="$seed" --config.target.flop_ratio="$target")
python -m tas_jax.main "${common_flags[@]}" --workdir="$dir/paper" \
  --config.pipeline.runs=tas-kd,pas-ce,l1-ce,fpgm-ce,uniform-ce,random-ce
mkdir -p "$dir/common/distill"
for stage in teacher search extract search-pas extract-pas search-l1 extract-l1 search-fpgm \
    extract-fpgm; do
  ln -sfn "../paper/$stage" "$dir/common/$stage"
done
ln -sfn ../../paper/distill/tas-kd "$dir/common/distill/tas-kd"
python -m tas_jax.main "${common_flags[@]}" --workdir="$dir/common" \
  --config.pas.finetune=distill --config.l1.finetune=distill --config.fpgm.finetune=distill \
  --config.pipeline.runs=tas-kd,pas-kd,l1-kd,fpgm-kd,uniform-kd,random-kd
