"""Error messages in the reader's language: Simplified Chinese by default, English on request.

One gettext catalogue (``app/translations/zh/LC_MESSAGES/messages.po``, compiled to ``.mo`` and
committed) holds the Chinese text of every English message the service can send. The English text
is the key (gettext's way), so:

- each error code's default message (the ``message`` of its class in ``app/errors.py``, plus the few
  HTTP-only codes below) has a Chinese entry — a test checks that every code has both texts;
- a service that raises an error with its own English message (``errors.InvalidState("Only an
  active binding can be suspended; it is {status}.", params={"status": ...})``) gets that exact text
  translated, values filled in after translation;
- a message the catalogue does not know (a new one not yet translated, or one built at run time)
  falls back to the code's default Chinese message, so a Chinese reader never gets English;
- a few standard texts that are not errors (what a user reads instead of a reason that is not
  theirs, app/services/authorizations.py) are marked with ``N_`` and shown with ``text``.

Locale negotiation (``Accept-Language``) goes through Flask-Babel; ``message_for`` and
``translate`` are plain functions that work outside a request too (the console, the CLI).
How a new error gets its two texts: docs/api-contract.md, "How a new error gets its two texts".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from babel.support import NullTranslations, Translations
from flask import Flask, has_request_context, request

from app import errors

log = logging.getLogger(__name__)

TRANSLATIONS_DIR = Path(__file__).resolve().parent / "translations"
DOMAIN = "messages"
DEFAULT_LOCALE = "zh"
LOCALES = ("zh", "en")

# Codes the HTTP layer produces without a domain error class (app/errors_http.py).
HTTP_ONLY_MESSAGES: dict[str, str] = {
    "METHOD_NOT_ALLOWED": "This method is not allowed here.",
    "HTTP_ERROR": "The request could not be handled.",
    "INTERNAL_ERROR": "Something went wrong on our side.",
}


def error_classes() -> list[type[errors.DomainError]]:
    """Every domain error class of ``app/errors.py``, in the order they are defined."""
    found: list[type[errors.DomainError]] = []
    pending: list[type[errors.DomainError]] = [errors.DomainError]
    while pending:
        cls = pending.pop(0)
        pending.extend(cls.__subclasses__())
        if cls.__module__ == errors.__name__:
            found.append(cls)
    return found


def default_messages() -> dict[str, str]:
    """Every error code the service sends → its default English message (that of the first class
    with the code: several classes may share one, e.g. the console's sign-in errors)."""
    found: dict[str, str] = {}
    for cls in error_classes():
        found.setdefault(cls.code, cls.message)
    return found | HTTP_ONLY_MESSAGES


def error_codes() -> list[str]:
    """All error codes, sorted (the enum of the OpenAPI error component)."""
    return sorted(default_messages())


@lru_cache(maxsize=8)
def _catalogue(locale: str) -> NullTranslations:
    if locale == "en":
        return NullTranslations()  # the English text is the key
    return Translations.load(str(TRANSLATIONS_DIR), [locale], domain=DOMAIN)


def normalize_locale(locale: str | None) -> str:
    if not locale:
        return DEFAULT_LOCALE
    language = str(locale).replace("-", "_").split("_")[0].lower()
    return language if language in LOCALES else DEFAULT_LOCALE


def known(text: str, locale: str) -> bool:
    """Whether the catalogue of ``locale`` has ``text`` (English always does)."""
    locale = normalize_locale(locale)
    return locale == "en" or _catalogue(locale).gettext(text) != text


def N_(message: str) -> str:  # noqa: N802 — gettext's name for "mark for the catalogue, translate later"
    """Mark an English text that is not an error message (a standard text the service shows people)
    for the catalogue: ``scripts/i18n`` finds it here; ``text`` translates it when it is shown."""
    return message


def text(message: str, locale: str | None = DEFAULT_LOCALE) -> str:
    """A text marked with ``N_`` in ``locale`` ("zh" or "en"). Every marked text has its Chinese
    entry (``scripts/i18n check``, and a test), so a Chinese reader never gets the English key."""
    return _catalogue(normalize_locale(locale)).gettext(message)


def message_for(code: str, locale: str | None = DEFAULT_LOCALE) -> str:
    """The default message of an error code in ``locale`` ("zh" or "en"); unknown codes get the
    generic message of ``HTTP_ERROR``."""
    english = default_messages().get(code, HTTP_ONLY_MESSAGES["HTTP_ERROR"])
    return _catalogue(normalize_locale(locale)).gettext(english)


def translate(template: str, *, code: str, params: Mapping[str, Any] | None = None,
              locale: str | None = DEFAULT_LOCALE) -> str:
    """``template`` (English, ``{name}`` fields) in ``locale``, with ``params`` filled in.

    An English text the catalogue does not know becomes the code's default message in that locale.
    """
    locale = normalize_locale(locale)
    if known(template, locale):
        text = _catalogue(locale).gettext(template)
    else:
        log.debug("no %s translation for a %s message", locale, code)
        text, params = message_for(code, locale), None
    if params:
        try:
            return text.format(**params)
        except (KeyError, IndexError, ValueError):
            log.warning("translation of a %s message does not take its parameters", code)
            return template.format(**params)
    return text


def request_locale() -> str:
    """The locale of the current request: English when Accept-Language prefers it, else Chinese."""
    if not has_request_context():
        return DEFAULT_LOCALE
    return negotiate(request.accept_languages)


def negotiate(accepted: Any) -> str:
    """The first of our languages by the client's preference, a region or script not mattering
    (``zh-TW;q=0.9`` beats ``en;q=0.3``, which Werkzeug's exact-match-first ``best_match`` gets wrong)."""
    ranked = sorted(((quality, -position, value) for position, (value, quality) in enumerate(accepted)),
                    reverse=True)
    for quality, _position, value in ranked:
        if quality <= 0:
            continue
        if value == "*":
            return DEFAULT_LOCALE
        language = value.replace("_", "-").split("-")[0].lower()
        if language in LOCALES:
            return language
    return DEFAULT_LOCALE


def init_app(app: Flask) -> None:
    from flask_babel import Babel

    Babel(app, default_locale=DEFAULT_LOCALE, default_domain=DOMAIN,
          default_translation_directories=str(TRANSLATIONS_DIR), locale_selector=request_locale)
