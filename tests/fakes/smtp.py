"""A real SMTP relay for tests: aiosmtpd on 127.0.0.1 with STARTTLS (required) and AUTH.

The certificate is self-signed, made here for 127.0.0.1 and localhost with `cryptography`;
`cert_file` is what a client trusts (Pigeon gets it as SSL_CERT_FILE). AUTH (PLAIN, LOGIN)
is required and offered only after STARTTLS. Every accepted message is kept with the session
it came on (whether it was encrypted, who logged in). Replies are injected per stage:
`reply_next("RCPT", "451 4.7.1 Try again later")`, `reject_recipient(address, "550 ...")`,
`drop_next("DATA")` (the connection is cut instead of answering).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 and localhost, written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "relay-cert.pem", directory / "relay-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@dataclass(frozen=True)
class Received:
    """One message the relay accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    session: int
    encrypted: bool
    login: str | None

    @property
    def email(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Injections:
    replies: dict[str, list[str]] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)


class FakeRelay:
    """The relay, its certificate, what it received and what it will answer next."""

    def __init__(self, directory: Path, *, username: str, password: str, port: int) -> None:
        self.username, self.password = username, password
        self.cert_file, key_file = self_signed_certificate(directory)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, key_file)
        self.received: list[Received] = []
        self.sessions: list[int] = []
        self.failed_logins = 0
        self.logins: dict[int, str] = {}
        self._lock = threading.Lock()
        self._injections = _Injections()
        self.controller = Controller(
            _Handler(self),
            hostname="127.0.0.1",
            port=port,
            tls_context=context,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=self._authenticate,
        )
        self.port = port

    def start(self) -> FakeRelay:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def reset(self) -> None:
        with self._lock:
            self.received.clear()
            self._injections = _Injections()

    def reply_next(self, stage: str, reply: str, n: int = 1) -> None:
        """Answer the next n RCPT or DATA commands with this reply instead."""
        with self._lock:
            self._injections.replies.setdefault(stage, []).extend([reply] * n)

    def drop_next(self, stage: str, n: int = 1) -> None:
        """Cut the connection at the next n RCPT or DATA commands, without a reply."""
        with self._lock:
            self._injections.drops[stage] = self._injections.drops.get(stage, 0) + n

    def reject_recipient(self, address: str, reply: str) -> None:
        """Refuse this recipient at RCPT with this reply, from now on."""
        with self._lock:
            self._injections.rejected[address] = reply

    def injected(self, stage: str, address: str | None = None) -> str | None:
        """The reply (or "DROP") to give at a stage instead of the normal one."""
        with self._lock:
            if self._injections.drops.get(stage):
                self._injections.drops[stage] -= 1
                return "DROP"
            queued = self._injections.replies.get(stage)
            if queued:
                return queued.pop(0)
            if address is not None:
                return self._injections.rejected.get(address)
        return None

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == self.username
            and data.password.decode() == self.password
        )
        if ok:
            self.logins[id(session)] = self.username
        else:
            self.failed_logins += 1
        # handled=False: aiosmtpd answers the refusal itself (535 5.7.8).
        return AuthResult(success=ok, handled=False)


class _Handler:
    def __init__(self, relay: FakeRelay) -> None:
        self.relay = relay

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: Any
    ) -> Any:
        session.host_name = hostname
        if id(session) not in self.relay.sessions:
            self.relay.sessions.append(id(session))
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        reply = self.relay.injected("RCPT", address)
        if reply == "DROP":
            assert server.transport is not None
            server.transport.abort()
            return "421 4.4.2 connection dropped"
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self.relay.injected("DATA")
        if reply == "DROP":
            assert server.transport is not None
            server.transport.abort()
            return "421 4.4.2 connection dropped"
        if reply is not None:
            return reply
        login = self.relay.logins.get(id(session))
        data = envelope.original_content or b""
        self.relay.received.append(
            Received(
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                data=data,
                session=id(session),
                encrypted=session.ssl is not None,
                login=login,
            )
        )
        return f"250 2.0.0 Ok: queued as Q{len(self.relay.received):05d}"
