"""SASL/SSL options of a stream endpoint, turned into aiokafka client arguments.

Keys are accepted in aiokafka's spelling (``sasl_plain_username``) or in the Kafka/librdkafka
spelling most users already have in a properties file (``sasl.username``,
``ssl.ca.location``); dots and dashes become underscores, case is ignored. SSL file options
build one ``ssl.SSLContext``. Secrets belong in ``CORMORANT_KAFKA_BRIDGE_SECURITY`` (a JSON
object) rather than on the command line, where ``ps`` shows them.

One reading for every Kafka client of the platform: the deployer checks a stream endpoint's
topics with these options, and its kafka-bridge replicas consume and produce with them.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, Final

from cormorant.common.errors import BadRequest

_PROTOCOLS: Final = frozenset({"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"})
_MECHANISMS: Final = frozenset({"PLAIN", "GSSAPI", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"})
_PASSED: Final = frozenset(
    {
        "security_protocol",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
    }
)
_SSL_FILES: Final = {
    "ssl_cafile": "cafile",
    "ssl_capath": "capath",
    "ssl_certfile": "certfile",
    "ssl_keyfile": "keyfile",
    "ssl_password": "password",
}
_ALIASES: Final = {
    "sasl_username": "sasl_plain_username",
    "sasl_password": "sasl_plain_password",
    "sasl_mechanisms": "sasl_mechanism",
    "ssl_ca_location": "ssl_cafile",
    "ssl_certificate_location": "ssl_certfile",
    "ssl_key_location": "ssl_keyfile",
    "ssl_key_password": "ssl_password",
}


class InvalidSecurityOption(BadRequest):
    """A security option the Kafka clients do not know, or a value they cannot use."""

    code = "invalid_kafka_security"


def client_security(options: Mapping[str, str]) -> dict[str, Any]:
    """aiokafka keyword arguments for ``options``; ``InvalidSecurityOption`` names what is wrong."""
    kwargs: dict[str, Any] = {}
    ssl_files: dict[str, str] = {}
    for raw_key, value in options.items():
        key = raw_key.strip().lower().replace(".", "_").replace("-", "_")
        key = _ALIASES.get(key, key)
        if key in _PASSED:
            kwargs[key] = value
        elif key in _SSL_FILES:
            ssl_files[_SSL_FILES[key]] = value
        else:
            known = sorted(_PASSED | set(_SSL_FILES) | set(_ALIASES))
            raise InvalidSecurityOption(
                f"unknown Kafka security option {raw_key!r}; known: {', '.join(known)}"
            )
    protocol = _choice(kwargs, "security_protocol", _PROTOCOLS)
    _choice(kwargs, "sasl_mechanism", _MECHANISMS)
    if ssl_files or (protocol or "").endswith("SSL"):
        try:
            kwargs["ssl_context"] = _ssl_context(**ssl_files)
        except (OSError, ValueError) as exc:
            raise InvalidSecurityOption(f"the SSL options cannot be used: {exc}") from exc
    return kwargs


def _choice(kwargs: dict[str, Any], key: str, allowed: frozenset[str]) -> str | None:
    # Kafka's names are upper case; users write them either way.
    value: str | None = kwargs.get(key)
    if value is None:
        return None
    kwargs[key] = value = value.upper()
    if value not in allowed:
        raise InvalidSecurityOption(f"{key} {value!r} is not one of {', '.join(sorted(allowed))}")
    return value


def _ssl_context(
    *,
    cafile: str | None = None,
    capath: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    password: str | None = None,
) -> ssl.SSLContext:
    # What aiokafka's create_ssl_context builds (hostname checked, system CAs unless given),
    # without importing a Kafka client into the common package.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile, capath=capath)
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile, password)
    return context
