"""TLS client settings for mail connections: the truststore and the lowest allowed version."""

from __future__ import annotations

import ssl

TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
DEFAULT_TLS_MIN = "1.2"


def client_context(min_version: str, truststore_pem: str | None) -> ssl.SSLContext:
    """A verifying client context; trusts only `truststore_pem` when given, else the system store.

    Raises ValueError for an unknown version or a truststore without a usable certificate.
    """
    if min_version not in TLS_VERSIONS:
        raise ValueError(f"unknown TLS version {min_version!r}")
    if truststore_pem:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_verify_locations(cadata=truststore_pem)
        except ssl.SSLError as exc:
            raise ValueError(f"the truststore holds no usable certificate ({exc.reason})") from None
    else:
        context = ssl.create_default_context()
    context.minimum_version = TLS_VERSIONS[min_version]
    return context
