"""What a failed push means, and what of its output may be shown.

A failure is the registry's when it is down or had a transient fault: `classify_push_failure` says so, the
publisher retries it as it retries every registry call (`raybuild.registry_retry`), and `unreachable` is
the one line left after the last attempt. Any other
failure gets `push_hint` where the output names a cause (a login, a plain-HTTP registry). Docker's output
is shown through `redact`, so a line that may carry a credential never reaches the terminal or a CI log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from raybuild.errors import PublishError
from raybuild.registry import RegistryUnreachable, api_url

# Both are retried; what is still failing after the last attempt is reported as "down" or "failing".
_DOWN = re.compile(
    r"connection refused|no such host|server misbehaving|no route to host|network is unreachable"
)
_TRANSIENT = re.compile(
    r"connection reset|i/o timeout|tls handshake timeout|broken pipe|unexpected eof|awaiting headers|"
    r"unexpected http status: 5\d\d|\b5\d\d (internal server error|bad gateway|service unavailable)|"
    r"gateway time-?out"
)
# Lines that may carry a credential are never shown, whatever else they say.
_SECRET_LINE = re.compile(r"authorization|password|passwd|bearer\s|x-registry-auth|identitytoken", re.I)
_SECRET_ENV = re.compile(r"PASS|TOKEN|SECRET|AUTH|CREDENTIAL|API_?KEY", re.I)


def classify_push_failure(output: str) -> RegistryUnreachable | None:
    """A failure worth retrying: the registry is down or had a transient fault. None: retrying won't help."""
    found = _DOWN.search(output.lower()) or _TRANSIENT.search(output.lower())
    return RegistryUnreachable(found.group(0), down=found.re is _DOWN) if found else None


def secret_values(environ: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(value for name, value in environ.items() if _SECRET_ENV.search(name) and len(value) >= 6)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Drops lines that may hold a credential; masks the values of secret-looking environment variables."""
    text = "\n".join(line for line in text.splitlines() if not _SECRET_LINE.search(line))
    for value in secrets:
        text = text.replace(value, "***")
    return text


def unreachable(exc: RegistryUnreachable) -> PublishError:
    """Publish's line for a registry still failing after the retries (``exc.attempts`` of them)."""
    host, attempts = exc.address, exc.attempts
    what = "is not reachable" if exc.down else "kept failing"
    message = f"registry {host} {what} ({exc.reason}, {attempts} attempts); nothing was recorded"
    if exc.down:
        hint = (
            "check that it is running and that --registry (or [project].registry) is right: "
            f"`curl {api_url(host)}`"
        )
    else:
        hint = "the registry or the network is unstable: rerun `raybuild publish` (pushed layers are kept)"
    return PublishError(message, hint=hint)


def push_hint(line: str) -> str | None:
    lowered = line.lower()
    if any(word in lowered for word in ("denied", "unauthorized", "authentication required")):
        return "run `docker login HOST` (raybuild uses docker's own credential store) and check push rights"
    if "http response to https client" in lowered:
        return "the registry speaks plain HTTP: add it to the daemon's insecure-registries, or serve TLS"
    return None
