"""`runtime.interrupts.own_sigint`: Ctrl-C raises KeyboardInterrupt inside the block even when SIGINT was
ignored or blocked before, and both are restored after."""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import time

import pytest

from runtime.interrupts import own_sigint


def test_ignored_sigint_still_interrupts_inside_and_is_restored_after():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt), own_sigint():
            _thread.interrupt_main()
            time.sleep(1.0)  # the interrupt lands here
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_blocked_sigint_is_unblocked_inside_and_blocked_again_after():
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with pytest.raises(KeyboardInterrupt), own_sigint():
            assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
        assert signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def test_a_child_started_with_sigint_ignored_still_stops_on_ctrl_c():
    code = "from runtime.interrupts import own_sigint\nimport time\nwith own_sigint():\n    time.sleep(30)\n"
    # `trap '' INT` = SIG_IGN, inherited through exec: the child starts with Ctrl-C ignored
    proc = subprocess.Popen(["bash", "-c", 'trap "" INT; exec "$0" -c "$1"', sys.executable, code],
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), stderr=subprocess.PIPE)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err
