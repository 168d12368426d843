"""The parent process of test_decode_pool's signal tests, in a module of its own (a spawned
decoder imports its parent's main module): start a decoder pool, signal the whole process
group `delay` seconds later, as a terminal's Ctrl-C or `timeout` would while the decoders
are still starting, then close the pool and print the decoders' pids.

With `held`, the test started this process with the stopping signals blocked, as a batch
starts its Dask workers (`batch_flow._out_of_group_signals`): the decoders must go on through
the group's signal (it prints whether they were still alive after it), and end when the pool
closes."""

from __future__ import annotations

import os
import signal
import sys
import time

from wsi_segment.errors import STOPPING_SIGNALS
from wsi_segment.pipeline.inference.decode_pool import DecodePool


def main(delay: float, signum: int, held: bool) -> None:
    signal.signal(signum, signal.default_int_handler)  # SIGTERM too: clean up as Ctrl-C
    assert held == (set(STOPPING_SIGNALS) <= signal.pthread_sigmask(signal.SIG_BLOCK, ()))
    pool = DecodePool(2)
    pids = [proc.pid for proc in pool.procs]
    alive = []
    try:
        time.sleep(delay)
        os.killpg(0, signum)
        time.sleep(1 if held else 5)  # a signal not held ends this wait
        alive = [proc.is_alive() for proc in pool.procs]
    except KeyboardInterrupt:
        pass
    finally:
        pool.close()
    print(*pids)
    if held:
        print(*alive)


if __name__ == "__main__":
    main(float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] == ["held"])
