"""Test aid: a shorter Flower heartbeat, so that a SIGKILLed node is noticed in ~20 s.

Flower 1.41 has no flag for the heartbeat interval (30 s; a crash is noticed after two missed
beats, ~50 s). Deployment tests put this folder on PYTHONPATH and set
ROBUSTFL_TEST_HEARTBEAT=10 for the SuperLink and SuperNodes, which then import this module at
start-up, before Flower reads the constant. 10 s is the SuperLink's accepted minimum.
"""

import os

_interval = os.environ.get("ROBUSTFL_TEST_HEARTBEAT")
if _interval:
    try:
        import flwr.common.constant as _constant

        _constant.HEARTBEAT_DEFAULT_INTERVAL = max(10, int(float(_interval)))
    except Exception:  # never break interpreter start-up over a test aid
        pass
