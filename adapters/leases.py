"""Keep queue leases alive in the background while long work (unlearning, retraining) runs."""
from __future__ import annotations

import threading

from adapters.queue import Lease, LeaseLost, RequestQueue


class LeaseKeeper:
    """Heartbeats ``leases`` every ``interval_s`` seconds on a daemon thread until closed.

    A lost lease (expired and claimed by another worker) stops the heartbeats;
    :meth:`check` then raises :class:`LeaseLost`, which is what the fencing
    checks before commit and before promote call. A batch holds several leases;
    losing any of them fences the whole batch off.
    """

    def __init__(self, queue: RequestQueue, leases: list[Lease], interval_s: float | None = None):
        self.queue, self.leases = queue, list(leases)
        self.interval_s = interval_s if interval_s is not None else max(queue.lease_seconds / 3, 0.05)
        self.lost: Lease | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.leases[0].request_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for lease in self.leases:
                try:
                    alive = self.queue.heartbeat(lease)
                except Exception:  # noqa: BLE001 - a busy/unreachable queue: try again next beat
                    continue
                if not alive:
                    self.lost = lease
                    return

    def release(self, lease: Lease) -> None:
        """Stop heartbeating a lease that ended (its request was rejected out of a batch)."""
        self.leases = [x for x in self.leases if x.fence != lease.fence]

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless every held lease is still current (the fencing check)."""
        if self.lost is not None:
            raise LeaseLost(f"request {self.lost.request_id}: lease {self.lost.fence} was lost")
        for lease in self.leases:
            self.queue.assert_current(lease)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
