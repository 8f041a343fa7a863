"""Embedded services: real ``rclone serve s3`` and a real background ``prefect server start``."""
from __future__ import annotations

import base64

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from flows.cli import main
from adapters.services import EmbeddedS3, PrefectServer, S3Config, s3_config
from unlearn_core.errors import InputError


def _pid(path: Path) -> int:
    return int(path.read_text())


def _running(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False


def test_session_s3_keys_and_auth(embedded_s3, s3):
    keys = embedded_s3.keys_file
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    assert json.loads(keys.read_text())["secret_key"] == s3.secret_key
    assert s3.secret_key not in repr(s3) and s3.access_key not in repr(s3)
    assert s3.endpoint_url.startswith("http://127.0.0.1:")
    client = s3.client()
    client.put_object(Bucket=s3.bucket, Key="probe/hello.txt", Body=b"hi")
    assert client.get_object(Bucket=s3.bucket, Key="probe/hello.txt")["Body"].read() == b"hi"
    wrong = S3Config(s3.endpoint_url, s3.access_key, "not-the-secret", s3.bucket)
    with pytest.raises(Exception, match="(?i)signature|denied|forbidden"):
        wrong.client().get_object(Bucket=s3.bucket, Key="probe/hello.txt")
    log = (embedded_s3.dir / "rclone.log").read_text()
    cmdline = Path(f"/proc/{_pid(embedded_s3.pid_file)}/cmdline").read_bytes().decode()
    assert s3.secret_key not in log and s3.secret_key not in cmdline


def test_s3_config_from_env():
    env = {"UNLEARNOPS_S3_ENDPOINT": "https://s3.example.com", "AWS_ACCESS_KEY_ID": "AK",
           "AWS_SECRET_ACCESS_KEY": "SK", "UNLEARNOPS_S3_BUCKET": "models"}
    cfg = S3Config.from_env(env)
    assert (cfg.endpoint_url, cfg.access_key, cfg.secret_key, cfg.bucket) == ("https://s3.example.com", "AK",
                                                                              "SK", "models")
    with pytest.raises(InputError) as err:
        S3Config.from_env({"UNLEARNOPS_S3_ENDPOINT": "https://s3.example.com"})
    assert err.value.field == "AWS_ACCESS_KEY_ID"


def test_up_down_start_and_stop_real_processes(tmp_path, capsys, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.delenv("UNLEARNOPS_S3_ENDPOINT", raising=False)
    assert main(["up", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    s3, prefect = EmbeddedS3(state), PrefectServer(state)
    s3_pid, prefect_pid = _pid(s3.pid_file), _pid(prefect.pid_file)
    assert _running(s3_pid) and _running(prefect_pid)
    url = prefect.api_url()
    with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
        assert resp.status == 200
    auth = prefect.client_env()["PREFECT_API_AUTH_STRING"]  # the API itself wants the generated basic auth
    assert oct(prefect.auth_file.stat().st_mode & 0o777) == "0o600" and auth not in out
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(urllib.request.Request(f"{url}/flows/filter", data=b"{}", method="POST"), timeout=5)
    assert denied.value.code == 401
    token = base64.b64encode(auth.encode()).decode()
    authed = urllib.request.Request(f"{url}/flows/filter", data=b"{}", method="POST",
                                    headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(authed, timeout=5) as resp:
        assert resp.status == 200
    cfg = s3_config(state)
    assert cfg.bucket in {b["Name"] for b in cfg.client().list_buckets()["Buckets"]}
    assert (state / "prefect" / "prefect.db").exists()
    assert cfg.secret_key not in out and cfg.access_key not in out and url in out
    key = state / "s3" / "receipts.key"  # the receipt signing key, beside the S3 keys
    assert oct(key.stat().st_mode & 0o777) == "0o600" and str(key) in out and key.read_bytes() not in out.encode()

    assert main(["up", "--state-dir", str(state)]) == 0  # idempotent: same processes
    assert capsys.readouterr().out.count("already running") == 2
    assert (_pid(s3.pid_file), _pid(prefect.pid_file)) == (s3_pid, prefect_pid)

    assert main(["down", "--state-dir", str(state)]) == 0
    assert "stopped" in capsys.readouterr().out
    assert not _running(s3_pid) and not _running(prefect_pid)
    assert prefect.api_url() is None and not s3.running()
    with pytest.raises(InputError, match="unlearn up"):
        s3_config(state)
    assert main(["down", "--state-dir", str(state)]) == 0
    assert capsys.readouterr().out.count("was not running") == 2
    assert oct(s3.keys_file.stat().st_mode & 0o777) == "0o600"  # keys survive for the next `up`


def test_state_dir_inside_checkout_is_refused(capsys):
    checkout = Path(__file__).resolve().parents[1]
    assert main(["up", "--state-dir", str(checkout / "state")]) == 2
    assert "--state-dir" in capsys.readouterr().err
    assert not (checkout / "state").exists()


def test_default_state_dir_from_env(monkeypatch, tmp_path):
    from adapters.services import default_state_dir

    monkeypatch.setenv("UNLEARNOPS_STATE_DIR", str(tmp_path / "s"))
    assert default_state_dir() == tmp_path / "s"
    monkeypatch.delenv("UNLEARNOPS_STATE_DIR")
    assert default_state_dir() == Path(os.path.expanduser("~")) / ".unlearnops"
