"""What trainguard needs from the operating system, below every other layer: who a process is (pid and
start time, never a pid alone), the environment a launcher hands down, resource readings (tree RSS, bytes
under a directory), content hashes, and files replaced atomically."""
