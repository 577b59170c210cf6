"""Which addresses an account may connect to (CASEMAIL_MAIL_HOST_POLICY).

Link-local and cloud metadata addresses are always refused, so that a host field cannot be used
to reach the metadata service of the machine Casemail runs on. Private and loopback addresses
serve on-premises mail servers and are allowed unless the policy is `public-only`.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class HostPolicy(enum.StrEnum):
    ALLOW_PRIVATE = "allow-private"
    PUBLIC_ONLY = "public-only"


DEFAULT_POLICY = HostPolicy.ALLOW_PRIVATE

# Metadata services outside the link-local ranges (AWS IPv6, Alibaba Cloud, Oracle Cloud).
_METADATA = {
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
    ipaddress.ip_address("192.0.0.192"),
}
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?$"
)


class HostRefused(ValueError):
    """The host or address is not allowed; the message says why."""


def parse_policy(value: str | None) -> HostPolicy:
    """The policy named by `value` (blank means the default); raises HostRefused if unknown."""
    if not value or not value.strip():
        return DEFAULT_POLICY
    try:
        return HostPolicy(value.strip().lower())
    except ValueError:
        raise HostRefused(
            f"CASEMAIL_MAIL_HOST_POLICY must be allow-private or public-only, not {value!r}."
        ) from None


def check_address(address: IPAddress, policy: HostPolicy, host: str) -> None:
    """Raises HostRefused when `address` (that `host` names) may not be connected to."""
    site_local = False
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            address = address.ipv4_mapped
        else:
            # A 6to4 address leads to the IPv4 address inside it.
            if address.sixtofour is not None:
                check_address(address.sixtofour, policy, host)
            site_local = address.is_site_local
    if address.is_link_local or address in _METADATA:
        raise HostRefused(
            f"{host} is a link-local or cloud metadata address ({address}); mail servers "
            "are never reached there."
        )
    # Site-local IPv6 (fec0::/10) is deprecated but still private wherever it is used.
    local = address.is_loopback or address.is_private or site_local
    if address.is_unspecified or address.is_multicast or (address.is_reserved and not local):
        raise HostRefused(f"{host} ({address}) is not an address a mail server can have.")
    if policy is HostPolicy.PUBLIC_ONLY and (not address.is_global or site_local):
        raise HostRefused(
            f"{host} is a private or loopback address ({address}), and this installation "
            "allows only public mail servers (CASEMAIL_MAIL_HOST_POLICY=public-only)."
        )


def check_host(host: str, policy: HostPolicy) -> None:
    """Check a host field as typed (without resolving it); raises HostRefused."""
    host = host.strip()
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        if not _HOSTNAME.match(host):
            raise HostRefused(f"{host!r} is not a host name or IP address.") from None
        if policy is HostPolicy.PUBLIC_ONLY and (
            host.rstrip(".").lower() == "localhost" or host.rstrip(".").endswith(".localhost")
        ):
            raise HostRefused(
                f"{host} is this machine, and this installation allows only public mail "
                "servers (CASEMAIL_MAIL_HOST_POLICY=public-only)."
            ) from None
        return
    check_address(address, policy, host)


def resolve(host: str, port: int, policy: HostPolicy) -> list[str]:
    """The addresses of `host` that the policy allows, in resolver order.

    Raises socket.gaierror when the name does not resolve, HostRefused when an address it
    resolves to is refused (one refused address refuses the host: it cannot be trusted).
    """
    check_host(host, policy)
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    infos = socket.getaddrinfo(literal, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        text = str(sockaddr[0])
        check_address(ipaddress.ip_address(text.split("%", 1)[0]), policy, host)
        if text not in addresses:
            addresses.append(text)
    return addresses
