"""Extract steering vectors from contrast pairs.

    python recipes/extract.py --config recipes/configs/extract.yaml
    accelerate launch --multi_gpu --num_processes 2 recipes/extract.py --config recipes/configs/extract.yaml
    (on CPU-only machines add ACCELERATE_USE_CPU=1; `--cpu --num_processes 2` starts only one process)
"""

import sys

from steerft.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
