"""Direct preference optimisation (TRL DPOTrainer) of a steering vector, a LoRA or all weights.

    python recipes/dpo.py --config recipes/configs/dpo_steer.yaml [key=value ...]
    python recipes/dpo.py --config recipes/configs/dpo_lora.yaml --no-wandb beta=0.2
    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml recipes/dpo.py --config ...

With an adapter the reference model is the adapter-disabled model (no second copy in memory).
Keys are those of `steerft.jobs.train.TrainConfig`; the run folder is output_dir/run_name.
"""

import sys

from steerft.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], pinned={"method": "dpo"}))
