"""Keep a queue lease alive in the background while long work (unlearning, retraining) runs."""
from __future__ import annotations

import threading

from unlearn_core.queue import Lease, LeaseLost, RequestQueue


class LeaseKeeper:
    """Heartbeats ``lease`` every ``interval_s`` seconds on a daemon thread until closed.

    A lost lease (expired and claimed by another worker) stops the heartbeats;
    :meth:`check` then raises :class:`LeaseLost`, which is what the fencing
    checks before commit and before promote call.
    """

    def __init__(self, queue: RequestQueue, lease: Lease, interval_s: float | None = None):
        self.queue, self.lease = queue, lease
        self.interval_s = interval_s if interval_s is not None else max(queue.lease_seconds / 3, 0.05)
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.request_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                alive = self.queue.heartbeat(self.lease)
            except Exception:  # noqa: BLE001 - a busy/unreachable queue: try again next beat
                continue
            if not alive:
                self.lost = True
                return

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless the lease is still current (the fencing check)."""
        if self.lost:
            raise LeaseLost(f"request {self.lease.request_id}: lease {self.lease.fence} was lost")
        self.queue.assert_current(self.lease)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
