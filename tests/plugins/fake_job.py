"""A stand-in for ``fedlab run`` in tests/test_reproduce.py: runs until SIGINT, counts the SIGINTs it gets
in the next half second, writes the count to ``<out_dir>/sigints`` and exits 130 as fedlab run does."""

import signal
import sys
import time
from pathlib import Path

hits: list[int] = []
signal.signal(signal.SIGINT, lambda signum, frame: hits.append(signum))
out = Path(next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("out_dir=")))
out.mkdir(parents=True, exist_ok=True)
(out / "started").write_text("1")
deadline = time.monotonic() + 60
while not hits and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.5)
(out / "sigints").write_text(str(len(hits)))
sys.exit(130 if hits else 0)
