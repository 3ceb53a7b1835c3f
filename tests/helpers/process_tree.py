"""Run under `trainguard run`: spawn a child and a grandchild (same session) and a double-forked setsid
daemon, write all pids (and start ticks) to the file given, then sleep - a tree that must not survive."""

import os
import subprocess
import sys
import time

from trainguard.registry import ProcessIdentity


def identity(pid: int) -> str:
    return f"{pid} {ProcessIdentity.of(pid).start_ticks}\n"


out = sys.argv[1]
if len(sys.argv) > 2 and sys.argv[2] == "level2":
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    if os.fork() == 0:  # double fork + setsid: a daemon re-parented away from everyone
        os.setsid()
        if os.fork() == 0:
            with open(out + ".daemon", "w") as f:
                f.write(identity(os.getpid()))
            time.sleep(600)
        os._exit(0)
    with open(out + ".level3", "w") as f:
        f.write(identity(grandchild.pid))
    time.sleep(600)
    sys.exit(0)
level2 = subprocess.Popen([sys.executable, __file__, out, "level2"])
with open(out + ".level2", "w") as f:
    f.write(identity(level2.pid))
with open(out + ".level1", "w") as f:
    f.write(identity(os.getpid()))
time.sleep(600)
