"""TLS to registries as docker sets it up, and when plain HTTP is allowed.

Docker trusts the system CAs plus, per registry, every ``*.crt`` in ``/etc/docker/certs.d/HOST[:PORT]/``
(and presents ``*.cert`` with its ``*.key`` as a client certificate), so a docker user has already put a
company CA there; raybuild reads the same folder, and ``SSL_CERT_FILE`` as Python's ``ssl`` does.

Docker tries HTTPS first for every registry, loopback included, and falls back to plain HTTP only for
loopback hosts and those in ``daemon.json``'s ``insecure-registries``. One difference is deliberate: for
those hosts docker also accepts a certificate it cannot verify; raybuild does not. A certificate that fails
verification is an error naming the host and where to put its CA, on loopback too: a registry that speaks
TLS can be trusted through ``certs.d``, and silently skipping the check would hide a misconfiguration that
docker itself does not hide for any other host.
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from raybuild.errors import RaybuildError
from raybuild.reference import ImageRef, is_loopback_host

DOCKER_CERTS_D = Path("/etc/docker/certs.d")
DOCKER_DAEMON_JSON = Path("/etc/docker/daemon.json")


class RegistryTlsError(RaybuildError):
    """A registry's certificate cannot be verified, or docker's TLS settings cannot be read."""


@dataclass(frozen=True)
class TlsSettings:
    """Where docker keeps per-registry CAs and its insecure-registries list (parameters for the tests)."""

    certs_d: Path = DOCKER_CERTS_D
    daemon_json: Path = DOCKER_DAEMON_JSON
    # Read at construction so a test's SSL_CERT_FILE applies to the contexts it builds.
    ssl_cert_file: str | None = field(default_factory=lambda: os.environ.get("SSL_CERT_FILE") or None)

    def registry_cert_dir(self, host: str) -> Path:
        """docker's folder for one registry: ``certs.d/HOST:PORT`` (no port when the reference has none)."""
        return self.certs_d / host

    def context_for(self, host: str) -> ssl.SSLContext:
        """A verifying context for ``host``: system CAs, ``SSL_CERT_FILE`` and docker's ``certs.d``."""
        context = ssl.create_default_context()
        if self.ssl_cert_file:
            _load(context.load_verify_locations, host, self.ssl_cert_file)
        folder = self.registry_cert_dir(host)
        if folder.is_dir():
            for ca_file in sorted(folder.glob("*.crt")):
                _load(context.load_verify_locations, host, str(ca_file))
            for cert_file in sorted(folder.glob("*.cert")):
                key_file = cert_file.with_suffix(".key")
                if not key_file.is_file():
                    raise RegistryTlsError(
                        f"{host}: client certificate {cert_file} has no key beside it ({key_file.name})",
                        hint="put the key there, or remove the certificate",
                    )
                _load(context.load_cert_chain, host, str(cert_file), str(key_file))
        return context

    def allows_plain_http(self, host: str) -> bool:
        """Whether docker would fall back to plain HTTP for ``host``: loopback or an insecure registry."""
        return is_loopback_host(host) or _listed_insecure(host, self.insecure_registries())

    def insecure_registries(self) -> tuple[str, ...]:
        """``insecure-registries`` from docker's ``daemon.json`` (none when there is no such file)."""
        try:
            loaded = json.loads(self.daemon_json.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ()
        except (OSError, ValueError, UnicodeError):
            raise RegistryTlsError(
                f"cannot read docker's {self.daemon_json}",
                hint="fix the file: it must be a JSON object",
            ) from None
        listed = loaded.get("insecure-registries", []) if isinstance(loaded, dict) else []
        return tuple(entry for entry in listed if isinstance(entry, str))

    def untrusted(self, host: str, reason: str) -> RegistryTlsError:
        """The one-line error for a certificate that fails verification."""
        return RegistryTlsError(
            f"{host}: TLS certificate not trusted ({reason})",
            hint=f"put the registry's CA certificate in {self.registry_cert_dir(host) / 'ca.crt'}",
        )


def _listed_insecure(host: str, listed: tuple[str, ...]) -> bool:
    """docker's match: an entry is ``HOST[:PORT]`` as written, or a CIDR holding the host's address."""
    if host in listed:
        return True
    try:
        address = ipaddress.ip_address(ImageRef(host=host, path="probe").hostname.strip("[]"))
    except ValueError:
        return False
    for entry in listed:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def _load(loader: object, host: str, *paths: str) -> None:
    assert callable(loader)
    try:
        loader(*paths)
    except (OSError, ssl.SSLError) as exc:
        raise RegistryTlsError(
            f"{host}: cannot load TLS file {paths[0]} ({exc.__class__.__name__})",
            hint="check that it is a PEM certificate (and key) and readable",
        ) from None


def is_verification_failure(exc: object) -> bool:
    """Whether a connection error is a certificate docker's CAs do not vouch for (as opposed to no TLS)."""
    return isinstance(exc, ssl.SSLCertVerificationError)
