"""One real ``rclone serve s3`` per test session (the embedded S3 of ``unlearn up``)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def embedded_s3(tmp_path_factory):
    """The running ``EmbeddedS3``; its state dir (data, 0600 keys, pid) is a session temp dir."""
    from adapters.services import EmbeddedS3

    server = EmbeddedS3(tmp_path_factory.mktemp("s3-state"))
    server.ensure_started()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(embedded_s3):
    """``S3Config`` (endpoint, keys, bucket) of the session's S3 server."""
    return embedded_s3.config()
