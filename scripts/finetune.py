"""Fine-tuning megfm as a classifier with subject-wise splits and subject-level metrics.

    python scripts/finetune.py --dataset LABELLED_DATASET --model_name_or_path PRETRAINED \
        --output_dir RUN_DIR --strategy lora --num_train_epochs 5

Strategies: full, linear_probe (frozen encoder), lora. Writes RUN_DIR/model (the classifier),
RUN_DIR/subject_predictions.tsv and RUN_DIR/subject_metrics.json; `--help` lists every option.
Works under `accelerate launch` like scripts/pretrain.py.
"""

from megfm_hf.memory import keep_freed_memory_unless_disabled
from megfm_hf.training.finetune import main

if __name__ == "__main__":
    keep_freed_memory_unless_disabled()
    main()
