"""Run `deval ARGS` and freeze at one point of the run so a test can SIGKILL it exactly there (test helper).

    python tests/kill_points.py POINT MARKER deval-args...

POINT: first (the run directory exists, no record written yet), mid (half of the 11th record written: a torn
line), summary (half of summary.json's temporary file written). At the point the helper creates MARKER and sleeps;
the test kills it. Nothing of deval's own code is changed: only the moment is held.
"""

import sys
import time
from pathlib import Path

from deval.runs import store


def hold(marker: Path) -> None:
    marker.write_text("here")
    while True:
        time.sleep(1)


def main() -> None:
    point, marker, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    if point == "first":
        original = store.RunDir.append

        def append(self, step):
            hold(marker)

        store.RunDir.append = append
    elif point == "mid":
        original = store.RecordLog.append
        count = [0]

        def append(self, record):
            count[0] += 1
            if count[0] == 11:
                line = store.dumps(record, indent=None) + "\n"
                with self.path.open("a", encoding="utf-8") as fh:
                    fh.write(line[: len(line) // 2])
                hold(marker)
            original(self, record)

        store.RecordLog.append = append
    elif point == "summary":
        def write_summary(self, summary):
            text = store.dumps(summary)
            (self.path / (store.SUMMARY + ".tmp")).write_text(text[: len(text) // 2])
            hold(marker)

        store.RunDir.write_summary = write_summary
    else:
        raise SystemExit(f"unknown point {point}")
    sys.argv = ["deval", *args]
    from deval.cli.main import main as deval_main

    deval_main()


if __name__ == "__main__":
    main()
