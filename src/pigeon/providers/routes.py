"""Which providers carry which channels, and what each needs configured: checked at start-up.

`PIGEON_SMS_PROVIDERS`, `PIGEON_WHATSAPP_PROVIDERS` and `PIGEON_EMAIL_PROVIDERS` list the
platform's providers per channel in the order they are tried; unset, a channel follows
`PIGEON_PROVIDER`. A name that is unknown, listed twice, on a channel its provider cannot
carry, or without its settings stops start-up with a message naming the variable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pigeon.config import Settings

CARRIES: dict[str, frozenset[str]] = {
    "sandbox": frozenset({"sms", "whatsapp", "email"}),
    "infobip": frozenset({"sms", "whatsapp", "email"}),
    "twilio": frozenset({"sms", "whatsapp"}),
    "smtp": frozenset({"email"}),
}
ROUTED_CHANNELS = ("sms", "whatsapp", "email")


def variable(channel: str) -> str:
    """The environment variable that lists a channel's providers."""
    return f"PIGEON_{channel.upper()}_PROVIDERS"


def _missing(settings: Settings, provider: str, channel: str) -> list[str]:
    """The variables a provider still needs to send on a channel."""
    needed: list[tuple[str, bool]] = []
    if provider == "infobip":
        needed = [
            ("PIGEON_INFOBIP_BASE_URL", bool(settings.infobip_base_url)),
            ("PIGEON_INFOBIP_API_KEY", bool(settings.infobip_api_key.get_secret_value())),
        ]
    elif provider == "twilio":
        needed = [
            ("PIGEON_TWILIO_ACCOUNT_SID", bool(settings.twilio_account_sid)),
            ("PIGEON_TWILIO_AUTH_TOKEN", bool(settings.twilio_auth_token.get_secret_value())),
        ]
        if channel == "sms":
            has_sender = bool(settings.twilio_sms_from or settings.twilio_messaging_service_sid)
            needed.append(
                ("PIGEON_TWILIO_SMS_FROM or PIGEON_TWILIO_MESSAGING_SERVICE_SID", has_sender)
            )
        else:
            needed.append(("PIGEON_TWILIO_WHATSAPP_FROM", bool(settings.twilio_whatsapp_from)))
    elif provider == "smtp":
        needed = [("PIGEON_SMTP_HOST", bool(settings.smtp_host))]
    return [name for name, present in needed if not present]


def route_problems(settings: Settings) -> list[str]:
    """What is wrong with the configured routes, one sentence each (empty when all is well)."""
    problems = []
    for channel in ROUTED_CHANNELS:
        names = settings.providers_for(channel)
        where = variable(channel)
        if not names:
            problems.append(f"{where} lists no provider")
        for position, name in enumerate(names):
            if name not in CARRIES:
                known = ", ".join(CARRIES)
                problems.append(f"{where}: unknown provider {name!r} (one of {known})")
            elif channel not in CARRIES[name]:
                carried = ", ".join(sorted(CARRIES[name]))
                problems.append(f"{where}: {name} cannot carry {channel} (it sends {carried})")
            elif name in names[:position]:
                problems.append(f"{where}: {name} is listed twice")
            else:
                missing = _missing(settings, name, channel)
                if missing:
                    problems.append(f"{where}: {name} needs {', '.join(missing)}")
    return problems


def check_routes(settings: Settings) -> None:
    """Raise ValueError naming the variables when a route cannot work."""
    problems = route_problems(settings)
    if problems:
        raise ValueError("; ".join(problems))
