"""Which addresses a source may be fetched from (pure): the SSRF policy, in one place.

Loopback and private ranges need `fetch.allow_private`; link-local (cloud metadata),
multicast, unspecified and reserved addresses are refused always, also when embedded in an
IPv6 address (IPv4-mapped, 6to4, NAT64, Teredo).
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_ip_literal(text: str) -> bool:
    """An IPv4 or IPv6 address written as such (not a host name)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _nets(*specs: tuple[str, str]) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.ip_network(net), why) for net, why in specs)


# Never reachable, whatever the settings: cloud metadata lives on link-local addresses, and
# 0.0.0.0/8 reaches the local host on Linux.
_ALWAYS_REFUSED = _nets(
    ("0.0.0.0/8", "unspecified ('this network', reaches the local host)"),
    ("169.254.0.0/16", "link-local (cloud metadata services live there)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
    ("100::/64", "reserved (discard-only)"),
)
# Reachable only with fetch.allow_private: the deployment's own networks and other
# special-purpose ranges that are not globally routable.
_PRIVATE = _nets(
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("192.0.0.0/24", "special-purpose (IETF protocol assignments)"),
    ("192.0.2.0/24", "documentation"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("198.18.0.0/15", "benchmarking"),
    ("::1/128", "loopback"),
    ("fc00::/7", "private (unique local)"),
    ("fec0::/10", "private (site-local)"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("64:ff9b:1::/48", "private (local-use NAT64)"),
)
_V4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address stands for, if it has one (and the name of the form)."""
    if ip in _V4_MAPPED:
        return "IPv4-mapped", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if any(ip in net for net in _NAT64):
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.teredo is not None:
        return "Teredo", ip.teredo[1]
    if ip in _V4_COMPATIBLE and int(ip) > 1:
        return "IPv4-compatible", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def check_address(ip: IPAddress, allow_private: bool) -> str | None:
    """Why a source may not be fetched from `ip`, or None when it may (pure)."""
    if ip.version == 6:
        ip = ipaddress.IPv6Address(int(ip))  # fe80::1%eth0: judge the address, not its zone
        embedded = _embedded_v4(ip)
        if embedded is not None:
            form, v4 = embedded
            reason = check_address(v4, allow_private)
            if reason is not None:
                return f"{ip} is the {form} form of {v4}, which is refused: {reason}"
            if form == "IPv4-compatible":
                return f"{ip} is a deprecated IPv4-compatible address (reserved)"
            if ip not in _NAT64[1]:  # local-use NAT64 is also judged as a private range below
                return None
    elif ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"{ip} is the broadcast address"
    for net, why in _ALWAYS_REFUSED:
        if ip.version == net.version and ip in net:
            return f"{ip} is {why}"
    for net, why in _PRIVATE:
        if ip.version == net.version and ip in net:
            return None if allow_private else f"{ip} is {why}; allowed only with fetch.allow_private"
    if ip.version == 6 and ip not in _GLOBAL_UNICAST_V6:
        return f"{ip} is reserved (outside global unicast 2000::/3)"
    return None
