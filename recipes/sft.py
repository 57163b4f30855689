"""Supervised fine-tuning (TRL SFTTrainer) of a steering vector, a LoRA or all weights.

    python recipes/sft.py --config recipes/configs/sft_steer.yaml [key=value ...]
    python recipes/sft.py --config recipes/configs/sft_lora.yaml --no-wandb n=64 seed=1
    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml recipes/sft.py --config ...

Keys are those of `steerft.jobs.train.TrainConfig`; the run folder is output_dir/run_name.
"""

import sys

from steerft.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], pinned={"method": "sft"}))
