"""The job behind `steerft study` and `recipes/study.py`: the sample-efficiency study (steerft.study).

Run as `python -m steerft.jobs.study` by a study's local workers (`workers: N`), each with its
assignment in the environment (steerft.study.workers).
"""

from __future__ import annotations

import sys

from ..study import StudyConfig, run_study
from ..study import workers

__all__ = ["StudyConfig", "run_study"]


def worker_main() -> int:
    """Entry point of a spawned local worker; a Ctrl-C is reported once, by the study process."""
    try:
        run_study(workers.worker_config())
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
