"""Normalising phone numbers and email addresses, with errors that name the field."""

from __future__ import annotations

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from pigeon.errors import field_error


def normalize_phone(raw: str, *, field: str) -> str:
    """Validate a phone number given with or without '+'; return its digits (Infobip style)."""
    text = raw.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    elif not text.startswith("+"):
        text = "+" + text
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        raise field_error(field, f"{raw!r} is not a phone number", code="invalid_phone") from None
    if not phonenumbers.is_valid_number(number):
        raise field_error(
            field, f"{raw!r} is not a valid phone number", code="invalid_phone"
        ) from None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164).lstrip("+")


def normalize_email(raw: str, *, field: str) -> str:
    """Validate an email address (syntax only, no DNS); return its normalised form."""
    try:
        return validate_email(raw.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise field_error(field, str(exc), code="invalid_email") from None
