"""TLS as docker sets it up: certs.d CAs, SSL_CERT_FILE, and when plain HTTP is allowed."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from raybuild.registry_tls import RegistryTlsError, TlsSettings
from tests.certs import make_ca


def test_the_registry_folder_is_host_and_port(tmp_path: Path) -> None:
    settings = TlsSettings(certs_d=tmp_path)
    assert settings.registry_cert_dir("127.0.0.1:5100") == tmp_path / "127.0.0.1:5100"
    assert settings.registry_cert_dir("registry.example.com") == tmp_path / "registry.example.com"


def _subjects(context: ssl.SSLContext) -> list[str]:
    return [
        value
        for cert in context.get_ca_certs()
        for rdn in cert["subject"]
        for key, value in rdn
        if key == "commonName"
    ]


def test_a_certs_d_ca_is_trusted_for_its_registry_only(tmp_path: Path) -> None:
    make_ca(tmp_path / "certs.d" / "127.0.0.1:5100", common_name="team CA")
    settings = TlsSettings(certs_d=tmp_path / "certs.d", ssl_cert_file=None)
    assert "team CA" in _subjects(settings.context_for("127.0.0.1:5100"))
    assert "team CA" not in _subjects(settings.context_for("127.0.0.1:5101"))


def test_ssl_cert_file_is_trusted_for_every_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = make_ca(tmp_path / "ca", common_name="company CA")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert_file))
    settings = TlsSettings(certs_d=tmp_path / "none")
    assert "company CA" in _subjects(settings.context_for("r.example"))


def test_a_client_certificate_without_its_key_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "r.example"
    folder.mkdir()
    (folder / "client.cert").write_text("x")
    with pytest.raises(RegistryTlsError, match=r"r.example: client certificate .*client.cert has no key"):
        TlsSettings(certs_d=tmp_path).context_for("r.example")


def test_a_ca_that_is_not_pem_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "r.example"
    folder.mkdir()
    (folder / "ca.crt").write_text("not a certificate")
    with pytest.raises(RegistryTlsError, match=r"r.example: cannot load TLS file .*ca.crt"):
        TlsSettings(certs_d=tmp_path, ssl_cert_file=None).context_for("r.example")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:5000", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("registry.internal:5000", True),  # listed as written
        ("registry.internal", False),  # the port is part of the entry
        ("10.1.2.3:5000", True),  # inside a listed CIDR
        ("10.2.0.1", False),
        ("registry.example.com", False),
    ],
)
def test_plain_http_only_for_loopback_and_insecure_registries(
    tmp_path: Path, host: str, allowed: bool
) -> None:
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text(json.dumps({"insecure-registries": ["registry.internal:5000", "10.1.0.0/16"]}))
    assert TlsSettings(daemon_json=daemon_json).allows_plain_http(host) is allowed


def test_no_daemon_json_lists_nothing(tmp_path: Path) -> None:
    assert TlsSettings(daemon_json=tmp_path / "missing.json").insecure_registries() == ()


def test_a_broken_daemon_json_is_a_one_line_error(tmp_path: Path) -> None:
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text("{oops")
    with pytest.raises(RegistryTlsError, match=r"^cannot read docker's .*daemon.json$"):
        TlsSettings(daemon_json=daemon_json).allows_plain_http("r.example")


def test_the_untrusted_error_says_where_the_ca_goes(tmp_path: Path) -> None:
    error = TlsSettings(certs_d=tmp_path).untrusted("127.0.0.1:5100", "self-signed certificate")
    assert str(error) == "127.0.0.1:5100: TLS certificate not trusted (self-signed certificate)"
    assert error.hint == f"put the registry's CA certificate in {tmp_path / '127.0.0.1:5100' / 'ca.crt'}"
