"""Credentials of the local servers (`scanflow.local`): every port they open asks for one.

- SeaweedFS: only its S3 API takes plain HTTP (with the S3 keys). Its master, volume, filer and admin HTTP ports and
  every gRPC port demand a client certificate from a private CA made here (mutual TLS), and the filer and volume
  servers additionally demand a signed token (JWT) for each read and write; WebDAV, Iceberg and Lance are not started.
- MLflow: the basic-auth app, one admin user, nobody else (`NO_PERMISSIONS` by default).
- Prefect: one shared auth string (`PREFECT_SERVER_API_AUTH_STRING` on the server, `PREFECT_API_AUTH_STRING` on clients).

Every file written here is readable by this user only (0600 in 0700 folders).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path

#: SeaweedFS components whose gRPC server and HTTP server take the certificate (mini runs them all in one process).
SEAWEEDFS_GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq")
SEAWEEDFS_HTTPS_COMPONENTS = ("master", "volume", "filer", "admin")
#: The folder (inside the server's data folder) that holds the CA certificate and the servers' certificate and key.
SEAWEEDFS_TLS_FOLDER = "tls"
MLFLOW_ADMIN_USERNAME = "scanflow-admin"


def new_secret() -> str:
    """A random URL-safe secret of 32 bytes (43 characters)."""
    return secrets.token_urlsafe(32)


def write_private(path: Path, data: str | bytes) -> None:
    """`data` into `path`, created or truncated with mode 0600 before a byte is written."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data.encode() if isinstance(data, str) else data)


@dataclass(frozen=True)
class SeaweedfsTls:
    """The certificate files of one SeaweedFS data folder: the CA that signed them, and one certificate (server and
    client use) with its key, which SeaweedFS's own components present to each other."""

    ca: Path
    certificate: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that trusts the CA and presents the certificate: what an operator's tool (or a test)
        needs to reach the internal HTTPS ports (master /dir/status, for example)."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.certificate), str(self.key))
        return context


def seaweedfs_tls_files(data_dir: Path) -> SeaweedfsTls:
    """Where the certificate files of the SeaweedFS storing under `data_dir` are (`seaweedfs_security` writes them)."""
    folder = data_dir / SEAWEEDFS_TLS_FOLDER
    return SeaweedfsTls(folder / "ca.crt", folder / "seaweedfs.crt", folder / "seaweedfs.key")


def seaweedfs_security(data_dir: Path) -> SeaweedfsTls:
    """Write, once per data folder, `security.toml` (read by `weed` from its working directory) and the certificates
    it names under `tls/`; later calls reuse them, so a restarted server keeps its keys. Returns the certificate files.

    The CA's private key is thrown away after signing: nobody can issue another certificate it trusts."""
    tls = seaweedfs_tls_files(data_dir)
    folder, config = tls.ca.parent, data_dir / "security.toml"
    if config.is_file() and all(path.is_file() for path in (tls.ca, tls.certificate, tls.key)):
        return tls
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    ca_pem, certificate_pem, key_pem = _certificates()
    write_private(tls.ca, ca_pem)
    write_private(tls.certificate, certificate_pem)
    write_private(tls.key, key_pem)
    write_private(config, _security_toml(tls))
    return tls


def _security_toml(tls: SeaweedfsTls) -> str:
    cert = f'cert = "{tls.certificate}"\nkey = "{tls.key}"\n'
    lines = [
        # Volume servers accept reads and writes only with a token the master signs for that one file...
        f'[jwt.signing]\nkey = "{new_secret()}"\n', f'[jwt.signing.read]\nkey = "{new_secret()}"\n',
        # ... and the filer only with a token its S3 gateway signs.
        f'[jwt.filer_signing]\nkey = "{new_secret()}"\n', f'[jwt.filer_signing.read]\nkey = "{new_secret()}"\n',
        "[access]\nui = false\n", "[filer.expose_directory_metadata]\nenabled = false\n",
        f'[grpc]\nca = "{tls.ca}"\n',
        *(f"[grpc.{component}]\n{cert}" for component in SEAWEEDFS_GRPC_COMPONENTS),
        f"[grpc.client]\n{cert}",
        f'[https.client]\nenabled = true\n{cert}ca = "{tls.ca}"\n',
        # A `ca` on a server section makes it demand a client certificate signed by that CA (mutual TLS).
        *(f'[https.{component}]\n{cert}ca = "{tls.ca}"\n' for component in SEAWEEDFS_HTTPS_COMPONENTS),
        f'[admin]\nuser = "admin"\npassword = "{new_secret()}"\n',
    ]
    return "\n".join(lines)


def _certificates() -> tuple[bytes, bytes, bytes]:
    """(CA certificate, certificate for 127.0.0.1/localhost with server and client use, its key), PEM, EC P-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=3650)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scanflow local seaweedfs ca")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    certificate = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scanflow seaweedfs")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(serialization.Encoding.PEM), certificate.public_bytes(serialization.Encoding.PEM), key_pem


@dataclass(frozen=True)
class MlflowAuth:
    """The MLflow server's one user (an admin). Clients pass it through MLFLOW_TRACKING_USERNAME/PASSWORD."""

    username: str
    password: str = field(repr=False)

    @classmethod
    def generate(cls) -> "MlflowAuth":
        return cls(MLFLOW_ADMIN_USERNAME, new_secret())

    def environment(self) -> dict[str, str]:
        """The variables every MLflow client (Python API, `mlflow` CLI) reads its credentials from."""
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}

    def server_environment(self, config_path: Path) -> dict[str, str]:
        """The variables `mlflow server --app-name basic-auth` needs: its config file, the admin to create on first
        start, and a fresh key for its CSRF tokens."""
        return {"MLFLOW_AUTH_CONFIG_PATH": str(config_path), "MLFLOW_AUTH_ADMIN_USERNAME": self.username,
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.password, "MLFLOW_FLASK_SERVER_SECRET_KEY": new_secret()}


def mlflow_auth_config(folder: Path) -> Path:
    """Write (0600) the basic-auth app's config: users in `folder`/mlflow-auth.db, and a user without an explicit
    grant may do nothing. Returns its path."""
    path = folder / "mlflow-auth.ini"
    database = (folder / "mlflow-auth.db").resolve()
    write_private(path, "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                        f"database_uri = sqlite:///{database}\nadmin_username = {MLFLOW_ADMIN_USERNAME}\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                        # A password check is a PBKDF2 hash (seconds on a busy 2-core machine): check each one once an
                        # hour, not on every request. One worker, one user: no other process can hold a stale entry.
                        "auth_cache_ttl_seconds = 3600\n")
    return path


def new_prefect_auth_string() -> str:
    """A Prefect auth string shaped `user:password` (user `scanflow`), so a browser's or curl's Basic credentials
    (`curl -u`) are the same string the Prefect clients send."""
    return f"scanflow:{new_secret()}"


def prefect_client_environment(auth_string: str) -> dict[str, str]:
    """The variable every Prefect client (Python API, `prefect` CLI, workers) sends as its Basic credentials."""
    return {"PREFECT_API_AUTH_STRING": auth_string}
