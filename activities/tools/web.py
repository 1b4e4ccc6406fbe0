"""The web, for the Researcher: `web_search` (DuckDuckGo through `ddgs`, or a fake in tests) and
`fetch_url` (a page's readable text).

Neither ever fails a run. A search that cannot reach DuckDuckGo answers "no results" and why; a
fetch that cannot be made answers why, and the model carries on with what it has.

`fetch_url` only reaches the public internet: http(s) only, and every address a name resolves to
— and the address the connection actually reached, checked before a byte of the body is read,
so DNS rebinding gets nowhere — must be a public one (no loopback, private, link-local,
multicast or reserved address; `FETCH_ALLOW_PRIVATE=true` lifts that for tests and private
deployments). Redirects are followed by hand, each hop checked. Bodies are capped, HTML is turned
into its readable text (trafilatura), and the text the model reads is capped again.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from activities.tools import ToolError, ToolOutput

MAX_REDIRECTS = 5
READABLE_TYPES = (
    "text/html",
    "text/plain",
    "application/xhtml",
    "application/json",
    "text/markdown",
)


@dataclass(frozen=True)
class FetchPolicy:
    timeout_s: float = 10.0
    max_bytes: int = 2_000_000
    allow_private: bool = False


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
        or ip.is_reserved or ip.is_unspecified
    )  # fmt: skip


async def _check_target(url: str, policy: FetchPolicy) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolError(f"only http(s) URLs can be fetched, not {url[:200]!r}")
    if policy.allow_private:
        return
    host = parts.hostname
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443)
    except OSError as exc:
        raise ToolError(f"cannot resolve {host}: {exc}") from None
    addresses = {info[4][0] for info in infos}
    refused = sorted(a for a in addresses if not _public(str(a)))
    if refused:
        raise ToolError(
            f"refusing to fetch {host}: it resolves to a non-public address ({refused[0]}); "
            "only the public web can be fetched"
        )


def _peer(response: httpx.Response) -> str | None:
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None
    addr = stream.get_extra_info("server_addr")
    return str(addr[0]) if addr else None


def readable(body: bytes, content_type: str) -> str:
    """The text a reader would read: the page's main content for HTML, the text otherwise."""
    text = body.decode("utf-8", errors="replace")
    if "html" not in content_type:
        return text
    import trafilatura  # loaded on the first fetch only

    extracted = trafilatura.extract(
        text, output_format="markdown", include_links=True, favor_precision=True
    )
    return extracted or _visible_text(text)


def _visible_text(page: str) -> str:
    """A short page trafilatura finds no main content in: its visible text, without scripts,
    styles and navigation."""
    import re

    from lxml import html as lxml_html

    try:
        doc = lxml_html.fromstring(page)
    except (ValueError, TypeError):
        return ""
    for node in doc.xpath("//script|//style|//noscript|//nav|//header|//footer|//template"):
        node.drop_tree()
    return re.sub(r"\s+", " ", doc.text_content()).strip()


async def fetch(url: str, policy: FetchPolicy, client: httpx.AsyncClient | None = None) -> Any:
    """(final URL, content type, readable text) of `url`, or `ToolError` saying why not."""
    own = client is None
    client = client or httpx.AsyncClient(timeout=policy.timeout_s, follow_redirects=False)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            await _check_target(url, policy)
            try:
                async with client.stream("GET", url, headers={"accept": "text/html,*/*"}) as rsp:
                    peer = _peer(rsp)
                    if peer is not None and not policy.allow_private and not _public(peer):
                        raise ToolError(f"refusing {url[:200]}: it connected to {peer}")
                    if rsp.is_redirect and "location" in rsp.headers:
                        url = urljoin(url, rsp.headers["location"])
                        continue
                    if rsp.status_code >= 400:
                        raise ToolError(f"{url[:200]} answered HTTP {rsp.status_code}")
                    kind = rsp.headers.get("content-type", "text/html").split(";")[0].lower()
                    if not kind.startswith(READABLE_TYPES):
                        raise ToolError(f"{url[:200]} is {kind}, not a page that can be read")
                    body = bytearray()
                    async for chunk in rsp.aiter_bytes():
                        body.extend(chunk)
                        if len(body) > policy.max_bytes:
                            break
            except httpx.HTTPError as exc:
                raise ToolError(f"could not fetch {url[:200]}: {type(exc).__name__}") from None
            text = await asyncio.to_thread(readable, bytes(body), kind)
            return url, kind, text
        raise ToolError(f"more than {MAX_REDIRECTS} redirects from {url[:200]}")
    finally:
        if own:
            await client.aclose()


def page_output(url: str, text: str) -> ToolOutput:
    text = text.strip()
    if not text:
        return ToolOutput(f"{url}: the page has no readable text", summary="no readable text",
                          data={"url": url, "chars": 0})  # fmt: skip
    return ToolOutput(
        f"Page {url}:\n\n{text}", summary=f"{len(text):,} characters",
        data={"url": url, "chars": len(text)},
    )  # fmt: skip
