"""Masked-signal pretraining of megfm on a window dataset.

One process (CPU or GPU):
    python scripts/pretrain.py --dataset DATASET_DIR --output_dir RUN_DIR --max_steps 10000

Several GPUs, bf16:
    accelerate launch --multi_gpu --num_processes 4 scripts/pretrain.py \\
        --dataset DATASET_DIR --output_dir RUN_DIR --bf16 --hidden_size 768 --num_hidden_layers 12

Resume after a crash with --resume (the last complete checkpoint in RUN_DIR). The trained
model lands in RUN_DIR/model; `--help` lists every option (the model's and the Trainer's).
"""

from megfm_hf.memory import keep_freed_memory_unless_disabled
from megfm_hf.training.pretrain import main

if __name__ == "__main__":
    keep_freed_memory_unless_disabled()
    main()
