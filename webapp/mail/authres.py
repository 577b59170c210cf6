"""Whether a message proves the domain of its From address.

Two kinds of evidence are read:
- DKIM signatures, verified here with dkimpy: a valid signature whose `d=` domain is the
  From domain or a parent of it (the signer vouches for that domain);
- the `Authentication-Results` header (RFC 8601) that a receiving server we trust wrote,
  parsed with the `authres` package: `dkim=pass` for the From domain, or `dmarc=pass` with
  `header.from` the From domain.

Anyone can write an Authentication-Results header into the message they send. A receiving
server adds its own header above everything the sender wrote, and RFC 8601 (section 5) asks
it to remove incoming headers that claim its authserv-id. So only the topmost header whose
authserv-id is trusted counts: a forged one below it, even with a trusted id, is never read,
and headers of other authserv-ids are ignored.

Pure: no Flask, no database; DNS only through the `dnsfunc` the caller passes (or dkimpy's
own resolver when it passes none).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import authres
import authres.dmarc
import dkim
import dkim.dnsplug
import dns.exception

# dkimpy calls it with the DNS name (bytes, with the trailing dot) and `timeout=`; it returns
# the TXT record's text, or None when there is none.
DnsFunc = Callable[..., bytes | None]

AR_HEADER = "Authentication-Results"
# More signatures than this on one reply is not a mail program at work; each costs a lookup.
MAX_SIGNATURES = 5
_AR_CONTEXT = authres.FeatureContext(authres.dmarc)
_COMMENT_RE = re.compile(r"\([^()]*\)")
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)


@dataclass(frozen=True)
class DkimResult:
    """The DKIM signatures of a message that verified, by signing domain."""

    valid_domains: tuple[str, ...]
    notes: tuple[str, ...]  # why the other signatures did not verify

    @property
    def signed(self) -> bool:
        return bool(self.valid_domains or self.notes)

    def passes_for(self, from_domain: str) -> str | None:
        """The signing domain that vouches for `from_domain`, or None."""
        return next((d for d in self.valid_domains if aligned(d, from_domain)), None)


@dataclass(frozen=True)
class MethodResult:
    """One `method=result` of an Authentication-Results header, with its properties."""

    method: str
    result: str
    properties: Mapping[str, str] = field(default_factory=dict)  # "header.d" -> "example.com"

    def __str__(self) -> str:
        props = " ".join(f"{name}={value}" for name, value in self.properties.items())
        return f"{self.method}={self.result}" + (f" {props}" if props else "")


@dataclass(frozen=True)
class TrustedResults:
    """The results of the topmost Authentication-Results header of a trusted server."""

    authserv_id: str | None  # None: no header of a trusted server
    results: tuple[MethodResult, ...] = ()
    ignored_ids: tuple[str, ...] = ()  # authserv-ids of headers above it that are not trusted
    problem: str = ""  # the trusted header could not be read

    def passes_for(self, from_domain: str) -> MethodResult | None:
        """The dkim=pass or dmarc=pass result that vouches for `from_domain`, or None."""
        for result in self.results:
            if result.result != "pass":
                continue
            if result.method == "dmarc":
                if result.properties.get("header.from", "").lower() == from_domain:
                    return result
            elif result.method == "dkim":
                domain = result.properties.get("header.d", "")
                if not domain:
                    domain = result.properties.get("header.i", "").rpartition("@")[2]
                if domain and aligned(domain.lower(), from_domain):
                    return result
        return None


def aligned(signer: str, from_domain: str) -> bool:
    """Whether `signer` is `from_domain` or a parent domain of it (never a bare TLD)."""
    signer, from_domain = signer.lower().rstrip("."), from_domain.lower().rstrip(".")
    if "." not in signer:
        return False
    return from_domain == signer or from_domain.endswith("." + signer)


def is_hostname(value: str) -> bool:
    """Whether `value` is a host name such as `mx.example.com` (an authserv-id)."""
    return bool(_HOSTNAME_RE.match(value.lower()))


def dkim_result(raw: bytes, dnsfunc: DnsFunc | None = None) -> DkimResult:
    """Verify the DKIM signatures of `raw` (the message as received)."""
    try:
        verifier = dkim.DKIM(raw)
    except dkim.DKIMException as exc:
        return DkimResult((), (f"the message cannot be read for DKIM: {exc}",))
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    valid: list[str] = []
    notes: list[str] = []
    for index in range(min(count, MAX_SIGNATURES)):
        verifier.domain = None  # set again by each verification that gets that far
        try:
            if dnsfunc is None:
                ok = verifier.verify(idx=index)
            else:
                ok = verifier.verify(idx=index, dnsfunc=dnsfunc)
        # dkimpy's own errors, what its parsers let through on mangled input, and dnspython's
        # refusals of a signer's name that is not a domain name (d=example..com): a signature
        # that cannot be checked is one that does not pass.
        except (
            dkim.DKIMException,
            dns.exception.DNSException,
            ValueError,
            TypeError,
            IndexError,
            KeyError,
        ) as exc:
            ok = False
            note = str(exc) or type(exc).__name__
        else:
            note = "the signature does not match the message"
        domain = _text(getattr(verifier, "domain", b"") or b"").lower()
        if ok and domain:
            valid.append(domain)
        else:
            notes.append(f"d={domain or '?'}: {note}")
    return DkimResult(tuple(dict.fromkeys(valid)), tuple(notes))


def authentication_results(
    message_headers: Sequence[tuple[str, str]], trusted_ids: Collection[str]
) -> TrustedResults:
    """The results of the topmost Authentication-Results header from a trusted authserv-id."""
    trusted = {t.strip().lower() for t in trusted_ids if t.strip()}
    ignored: list[str] = []
    for name, value in message_headers:
        if name.lower() != AR_HEADER.lower():
            continue
        text = " ".join(value.split())
        server = _authserv_id(text)
        if server not in trusted:
            ignored.append(server or "?")
            continue
        try:
            header = _AR_CONTEXT.parse_value(text)
        except authres.AuthResError as exc:
            return TrustedResults(server, (), tuple(ignored), f"unreadable ({exc})")
        results = tuple(
            MethodResult(
                str(result.method).lower(),
                str(result.result).lower(),
                {
                    f"{p.type}.{p.name}".lower(): str(p.value)
                    for p in result.properties
                    if p.value is not None
                },
            )
            for result in header.results
        )
        return TrustedResults(server, results, tuple(ignored))
    return TrustedResults(None, (), tuple(ignored))


def pinned_keys(text: str) -> dict[str, bytes]:
    """DKIM keys from lines `selector._domainkey.domain TXT-value` (`#` starts a comment).

    The value may be written as in a zone file, in double-quoted pieces. Raises ValueError
    naming the first line that is not such a line.
    """
    keys: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        name = name.strip().rstrip(".").lower()
        value = value.strip()
        if '"' in value:
            value = "".join(re.findall(r'"([^"]*)"', value))
        if "._domainkey." not in name or not is_hostname(name.replace("_", "x")) or not value:
            raise ValueError(
                f"line {number} is not 'selector._domainkey.domain TXT-value': {line[:60]!r}"
            )
        keys[name] = value.encode("ascii", "replace")
    return keys


def pinned_dnsfunc(keys: Mapping[str, bytes], fallback: DnsFunc | None) -> DnsFunc:
    """A dnsfunc for dkimpy that answers from `keys` first, then asks `fallback` (or nothing)."""

    def lookup(name: bytes | str, timeout: int = 5) -> bytes | None:
        key = _text(name).rstrip(".").lower()
        if key in keys:
            return keys[key]
        if fallback is None:
            return None
        return fallback(name, timeout=timeout)

    return lookup


def dns_lookup() -> DnsFunc:
    """dkimpy's own lookup of a signer's key in DNS (through dnspython)."""
    lookup: DnsFunc = dkim.dnsplug.get_txt
    return lookup


def _authserv_id(value: str) -> str:
    """The authserv-id of a header value (the part before the first ';', no comments)."""
    head = _COMMENT_RE.sub(" ", value.partition(";")[0]).split()
    return head[0].lower() if head else ""


def _text(value: bytes | str) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value
