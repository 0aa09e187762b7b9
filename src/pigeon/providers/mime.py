"""An email message for an SMTP relay, built with the standard library.

Text and HTML both given: `multipart/alternative` with the text first and the HTML last (the
part a client prefers). HTML alone: the same, with a text part derived from the HTML (for
clients and filters that read only text). Text alone: a single `text/plain` part. `Subject`
and display names outside ASCII are encoded per RFC 2047; `Message-ID` carries Pigeon's
messageId, so a bounce or a reply names the message it is about.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from html import unescape
from html.parser import HTMLParser

_BLOCKS = frozenset(
    {"p", "div", "br", "li", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "ul", "ol"}
    | {"section", "article", "header", "footer", "blockquote", "pre"}
)
_SKIPPED = frozenset({"script", "style", "head", "title"})


class _TextOfHtml(HTMLParser):
    """Collects an HTML document's readable text: blocks on their own lines, links kept."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0
        self._links: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skipping += 1
        elif tag in _BLOCKS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")
        if tag == "a":
            self._links.append(dict(attrs).get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCKS:
            self.parts.append("\n")
        if tag == "a" and self._links:
            href = self._links.pop()
            if href and not href.startswith(("#", "javascript:")):
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """A plain-text rendering of an HTML body."""
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    lines = [
        re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.parts).split("\n")
    ]
    text = "\n".join(lines)
    return unescape(re.sub(r"\n{3,}", "\n\n", text)).strip() + "\n"


def sender_address(sender: str) -> str:
    """The bare address of a sender like `Pigeon <noreply@pigeon.localhost>`."""
    return parseaddr(sender)[1] or sender


def _domain(sender: str) -> str:
    address = sender_address(sender)
    return address.rsplit("@", 1)[1] if "@" in address else "pigeon.localhost"


def message_id_header(message_id: str, sender: str) -> str:
    """The Message-ID for one of our messages: `<messageId@sender's domain>`."""
    return f"<{message_id}@{_domain(sender)}>"


def _address_header(value: str) -> Address:
    name, address = parseaddr(value)
    return Address(display_name=name, addr_spec=address or value)


def build_email(
    *,
    message_id: str,
    sender: str,
    to: str,
    subject: str,
    text: str | None,
    html: str | None,
    now: datetime,
) -> EmailMessage:
    """The MIME message for one email (see the module docstring)."""
    email = EmailMessage(policy=SMTP)
    email["From"] = _address_header(sender)
    email["To"] = _address_header(to)
    email["Subject"] = subject
    email["Date"] = format_datetime(now)
    email["Message-ID"] = message_id_header(message_id, sender)
    email["MIME-Version"] = "1.0"
    if html:
        email.set_content(text if text else html_to_text(html), subtype="plain")
        email.add_alternative(html, subtype="html")
    else:
        email.set_content(text or "", subtype="plain")
    return email
