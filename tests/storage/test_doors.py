"""Every door of the local stack needs credentials. The stack is started as `scanflow stack up` starts it; the ports
are read from the servers' processes themselves (not from the stack's records), so a port nobody configured is
found too. On each: a request without credentials is refused (a status >= 400 or no answer at all), and the normal
client with the stack's credentials works. Every port is on 127.0.0.1 only."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
from pathlib import Path

import boto3
import botocore
import psutil
import pytest
from botocore.config import Config
from pydantic import SecretStr

from scanflow.local_auth import SeaweedfsTls, seaweedfs_tls_files

pytestmark = pytest.mark.slow

#: HTTP/2's client preface and an empty SETTINGS frame: what a gRPC client sends first over TLS.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def listening(group: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket listening in process group `group` (a server and the workers it forked)."""
    found = set()
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) != group:
                continue
            found |= {(c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except (psutil.Error, ProcessLookupError):
            continue
    return found


@pytest.fixture(scope="module")
def doors(local_stack) -> dict[str, set[int]]:
    """The ports each server of the stack listens on, read from its processes."""
    opened = {name: listening(pid) for name, pid in local_stack.pids.items()}
    assert all(opened.values()), opened
    return {name: {port for _, port in sockets} for name, sockets in opened.items()} | {"_sockets": opened}


def request(port: int, method: str = "GET", path: str = "/", body: bytes | None = None, headers: dict | None = None,
            context: ssl.SSLContext | None = None) -> int | str:
    """The status of one HTTP request to 127.0.0.1:`port` (HTTPS with `context`), or the name of the error ending it."""
    connection = (http.client.HTTPSConnection("127.0.0.1", port, timeout=20, context=context) if context
                  else http.client.HTTPConnection("127.0.0.1", port, timeout=20))
    try:
        connection.request(method, path, body=body, headers=headers or {})
        return connection.getresponse().status
    except (OSError, http.client.HTTPException) as error:
        return type(error).__name__
    finally:
        connection.close()


def refused(result: int | str) -> bool:
    return isinstance(result, str) or result >= 400


def tls_first_bytes(port: int, context: ssl.SSLContext) -> bytes | str:
    """Over TLS (ALPN h2, then http/1.1): the first bytes the server sends after a client's first message (an HTTP/2
    preface, or an HTTP/1.1 GET), b"" when it hangs up, or the name of the error."""
    context.set_alpn_protocols(["h2", "http/1.1"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(H2_PREFACE if tls.selected_alpn_protocol() == "h2" else b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            return tls.recv(64)
    except OSError as error:
        return type(error).__name__


def ca_only(tls: SeaweedfsTls) -> ssl.SSLContext:
    """A client that trusts SeaweedFS's CA (so only the missing client certificate can fail) but has no certificate."""
    return ssl.create_default_context(cafile=str(tls.ca))


def seaweedfs_tls(local_stack) -> SeaweedfsTls:
    return seaweedfs_tls_files(Path(local_stack.directory) / "seaweedfs")


def test_every_server_listens_on_127_0_0_1_only_and_on_the_ports_the_stack_chose(local_stack, doors):
    addresses = {address for sockets in doors["_sockets"].values() for address, _ in sockets}
    assert addresses == {"127.0.0.1"}, doors["_sockets"]
    chosen = json.loads((Path(local_stack.directory) / "ports.json").read_text())
    seaweedfs = {port for name, port in chosen.items() if name.startswith("seaweedfs.") and name != "seaweedfs.webdav"} | {chosen["s3"]}
    assert doors["seaweedfs"] == seaweedfs, "SeaweedFS opened ports nobody chose (WebDAV, Iceberg, Lance?)"
    assert len(seaweedfs) == 10  # S3, master, volume, filer, admin: HTTP and gRPC each
    assert doors["mlflow"] == {chosen["mlflow"]} and doors["prefect"] == {chosen["prefect"]}


def test_seaweedfs_only_s3_speaks_without_a_certificate_and_s3_wants_its_keys(local_stack, doors):
    s3 = int(local_stack.s3_endpoint_url.rsplit(":", 1)[1])
    tls = seaweedfs_tls(local_stack)
    for port in sorted(doors["seaweedfs"] - {s3}):
        for method, body in (("GET", None), ("PUT", b"intruder"), ("POST", b"intruder")):
            assert refused(result := request(port, method, "/intruder.txt", body)), (port, method, result)
        without = tls_first_bytes(port, ca_only(tls))
        assert without in (b"", "SSLError", "ConnectionResetError", "BrokenPipeError"), (port, without)
        assert tls_first_bytes(port, tls.client_context()) not in (b"", "SSLError", "ConnectionResetError"), port

    chosen = json.loads((Path(local_stack.directory) / "ports.json").read_text())
    filer, master = chosen["seaweedfs.filer"], chosen["seaweedfs.master"]
    # Even the certificate is not enough to write through the filer: it also wants a token its S3 gateway signs.
    assert request(filer, "PUT", "/buckets/scanflow/intruder.txt", b"intruder", context=tls.client_context()) == 401
    assert request(master, "GET", "/dir/status", context=tls.client_context()) == 200

    def client(signature_version=None, **credentials):
        config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, signature_version=signature_version)
        return boto3.client("s3", endpoint_url=local_stack.s3_endpoint_url, region_name="us-east-1", config=config, **credentials)

    anonymous = client(botocore.UNSIGNED)
    wrong = client(aws_access_key_id=local_stack.access_key, aws_secret_access_key="not-the-key")
    for intruder in (anonymous, wrong):
        for call in (lambda c: c.put_object(Bucket=local_stack.bucket, Key="intruder.txt", Body=b"x"),
                     lambda c: c.list_objects_v2(Bucket=local_stack.bucket), lambda c: c.list_buckets()):
            with pytest.raises(botocore.exceptions.ClientError, match=r"AccessDenied|SignatureDoesNotMatch|InvalidAccessKeyId"):
                call(intruder)
    owner = client(aws_access_key_id=local_stack.access_key, aws_secret_access_key=local_stack.secret_key)
    owner.put_object(Bucket=local_stack.bucket, Key="doors/ok.txt", Body=b"ok")
    assert owner.get_object(Bucket=local_stack.bucket, Key="doors/ok.txt")["Body"].read() == b"ok"
    assert "intruder.txt" not in {o["Key"] for o in owner.list_objects_v2(Bucket=local_stack.bucket).get("Contents", [])}


def test_mlflow_answers_only_its_user_artifact_proxy_included(local_stack, doors, tmp_path, monkeypatch):
    (port,) = doors["mlflow"]
    wrong = {"Authorization": "Basic " + base64.b64encode(f"{local_stack.mlflow_username}:nope".encode()).decode()}
    attempts = [("GET", "/", None), ("GET", "/api/2.0/mlflow/experiments/search?max_results=5", None),
                ("POST", "/api/2.0/mlflow/experiments/create", b'{"name": "intruder"}'),
                ("GET", "/api/2.0/mlflow-artifacts/artifacts", None), ("GET", "/ajax-api/2.0/mlflow/experiments/search", None),
                ("PUT", "/api/2.0/mlflow-artifacts/artifacts/intruder.txt", b"intruder"),
                ("POST", "/api/2.0/mlflow/users/create", b'{"username": "intruder", "password": "intruder-password-1"}')]
    for method, path, body in attempts:
        for headers in ({"Content-Type": "application/json"}, {**wrong, "Content-Type": "application/json"}):
            assert request(port, method, path, body, headers) == 401, (method, path, headers.keys())
    assert request(port, "GET", "/health") == 200  # the health check is the one open path (and says only "OK")

    import mlflow

    from scanflow.tracking import mlflow_client

    for name, value in local_stack.environment().items():
        monkeypatch.setenv(name, value)
    client = mlflow_client(local_stack.mlflow_tracking_uri)
    experiment = client.create_experiment("doors")
    run = client.create_run(experiment)
    (tmp_path / "card.txt").write_text("through the door")
    client.log_artifact(run.info.run_id, str(tmp_path / "card.txt"))
    assert Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="card.txt", dst_path=str(tmp_path / "back"),
                                                    tracking_uri=local_stack.mlflow_tracking_uri)).read_text() == "through the door"
    assert "intruder" not in {e.name for e in client.search_experiments()}


def test_prefect_answers_only_with_its_auth_string_and_keeps_the_storage_secret_hidden(local_stack, doors):
    (port,) = doors["prefect"]
    attempts = [("GET", "/api/version", None), ("GET", "/api/admin/settings", None), ("POST", "/api/flows/filter", b"{}"),
                ("POST", "/api/flows/", b'{"name": "intruder"}'), ("POST", "/api/block_documents/filter", b'{"include_secrets": true}'),
                ("POST", "/api/variables/", b'{"name": "intruder", "value": "x"}'), ("GET", "/api/csrf-token?client=x", None)]
    wrong = {"Authorization": "Basic " + base64.b64encode(b"scanflow:nope").decode()}
    for method, path, body in attempts:
        for headers in ({"Content-Type": "application/json"}, {**wrong, "Content-Type": "application/json"}):
            assert request(port, method, path, body, headers) == 401, (method, path, headers.keys())
    assert request(port, "GET", "/api/health") == 200  # health and readiness probes stay open (they say only "true")

    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/api/events/in", subprotocols=["prefect"], open_timeout=20) as socket_:
        socket_.send(json.dumps({"type": "auth", "token": None}))
        with pytest.raises(Exception, match="1008|Auth required"):
            socket_.recv(timeout=20)

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from blocks import ScanflowStorage

    with temporary_settings(updates={PREFECT_API_URL: local_stack.prefect_api_url, PREFECT_API_AUTH_STRING: local_stack.prefect_auth_string}):
        ScanflowStorage(bucket=local_stack.bucket, endpoint_url=local_stack.s3_endpoint_url, aws_access_key_id=local_stack.access_key,
                        aws_secret_access_key=SecretStr(local_stack.secret_key)).save("doors", overwrite=True)
        with get_client(sync_client=True) as client:
            document = client.read_block_document_by_name("doors", "scanflow-storage", include_secrets=False)
        assert ScanflowStorage.load("doors").aws_secret_access_key.get_secret_value() == local_stack.secret_key
    assert document.data["aws_secret_access_key"] != local_stack.secret_key and local_stack.secret_key not in json.dumps(document.data)
    token = {"Authorization": "Basic " + base64.b64encode(local_stack.prefect_auth_string.encode()).decode(), "Content-Type": "application/json"}
    assert request(port, "POST", "/api/block_documents/filter", b"{}", token) == 200
