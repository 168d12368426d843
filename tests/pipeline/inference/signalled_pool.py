"""The parent process of test_decode_pool's start-up signal test, in a module of its own (a
spawned decoder imports its parent's main module): start a decoder pool, signal the whole
process group `delay` seconds later, as a terminal's Ctrl-C or `timeout` would while the
decoders are still starting, then close the pool and print the decoders' pids."""

from __future__ import annotations

import os
import signal
import sys
import time

from wsi_segment.pipeline.inference.decode_pool import DecodePool


def main(delay: float, signum: int) -> None:
    signal.signal(signum, signal.default_int_handler)  # SIGTERM too: clean up as Ctrl-C
    pool = DecodePool(2)
    pids = [proc.pid for proc in pool.procs]
    try:
        time.sleep(delay)
        os.killpg(0, signum)
        time.sleep(5)  # the signal ends this wait
    except KeyboardInterrupt:
        pass
    finally:
        pool.close()
    print(*pids)


if __name__ == "__main__":
    main(float(sys.argv[1]), int(sys.argv[2]))
