"""A sample-efficiency study (n x method x seed) from one YAML; the same as `steerft study`.

    python recipes/study.py --config eval/studies/quick.yaml [key=value ...]
    accelerate launch --multi_gpu --num_processes 2 recipes/study.py --config eval/studies/full.yaml

Keys are those of `steerft.study.StudyConfig`. Under `accelerate launch` the processes take the grid's
work units as they come free (see steerft.study.runner) and rank 0 writes the outputs; rerunning the command
resumes a study.
"""

import sys

from steerft.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", *sys.argv[1:]]))
