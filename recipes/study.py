"""A sample-efficiency study (n x method x seed) from one YAML; the same as `steerft study`.

    python recipes/study.py --config eval/studies/quick.yaml [key=value ...]
    accelerate launch --multi_gpu --num_processes 2 recipes/study.py --config eval/studies/full.yaml

Keys are those of `steerft.study.StudyConfig`. Under `accelerate launch` the processes split the
grid into work units (see steerft.study.points.work_units) and rank 0 writes the outputs; rerunning the command resumes a study.
"""

import sys

from steerft.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", *sys.argv[1:]]))
