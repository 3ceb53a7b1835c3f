"""Run under `trainguard run`: leave behind a process that sheds every trace the launcher gave it - double
fork, setsid, and an `env -i` exec (no TRAINGUARD_RUN_ID) - write "pid start-ticks" to the file given, and
sleep. Then the child itself sleeps too (so the launcher is alive until the test kills it)."""

import os
import sys
import time

out = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        code = (
            "import os, sys, time\n"
            "stat = open('/proc/self/stat').read()\n"
            "ticks = stat[stat.rfind(')') + 2:].split()[19]\n"
            f"open({out!r} + '.tmp', 'w').write(f'{{os.getpid()}} {{ticks}}\\n')\n"
            f"os.replace({out!r} + '.tmp', {out!r})\n"
            "time.sleep(600)\n"
        )
        os.execv("/usr/bin/env", ["env", "-i", sys.executable, "-c", code])
    os._exit(0)
time.sleep(600)
