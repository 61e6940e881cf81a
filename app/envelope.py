"""What every request pays around its view, done once where it can be (issue 13, docs/PERFORMANCE.md).

Each piece does exactly what the library it replaces does, without the work that gives the same
answer on every request:

- ``ServiceFlask.ensure_sync``: Flask asks, for every hook, view and wrapper of every request,
  whether the function is a coroutine (``inspect.iscoroutinefunction``, about ten times a request).
  The answer for a plain function never changes: it is remembered per function.
- ``CookieSessions``: Flask's signed-cookie sessions build an itsdangerous serializer for every
  request, even one without a cookie (every API call; only the web console has a session cookie),
  and read the cookie settings on every response. Without a ``Cookie`` header the session is empty
  whatever the serializer would say; an empty session nobody read or wrote leaves the response alone.
- ``SchemaOnceParser``: webargs makes a new instance of an ``@bp.arguments(SomeSchema)`` class for
  every request it parses (and the instance deep-copies its fields, and its nested schemas). A
  marshmallow schema keeps nothing between two ``load`` calls, so one instance per class serves
  every request; flask-smorest does the same for response schemas. The service's blueprints are
  ``app.envelope.Blueprint``, which parses with it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import flask_smorest
import marshmallow as ma
from flask import Flask
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from webargs.flaskparser import FlaskParser

# Guards for the per-process memos below: their keys are the app's own functions and schema classes
# (a few hundred at most); past the bound the work is simply done again, as without the memo.
_MAX_MEMO = 4096


class ServiceFlask(Flask):
    """Flask, remembering which of its functions are plain (synchronous) ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plain_functions: dict[Callable[..., Any], bool] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            if func in self._plain_functions:
                return func
        except TypeError:  # an unhashable callable: ask Flask every time
            return super().ensure_sync(func)
        wrapped = super().ensure_sync(func)
        if wrapped is func and len(self._plain_functions) < _MAX_MEMO and not inspect.iscoroutinefunction(func):
            self._plain_functions[func] = True
        return wrapped


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, without their per-request cost when there is no cookie."""

    def open_session(self, app: Flask, request: Any) -> SecureCookieSession | None:
        if app.secret_key and not request.environ.get("HTTP_COOKIE"):
            return self.session_class()  # what Flask answers for a request without the cookie
        return super().open_session(app, request)

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        if not session and not session.modified and not session.accessed:
            return  # Flask would neither vary on Cookie nor set or delete one
        super().save_session(app, session, response)


class SchemaOnceParser(FlaskParser):
    """webargs' Flask parser, instantiating each schema class once instead of once per request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._instances: dict[type[ma.Schema], ma.Schema] = {}

    def _get_schema(self, argmap: Any, req: Any) -> ma.Schema:
        if isinstance(argmap, type) and issubclass(argmap, ma.Schema):
            schema = self._instances.get(argmap)
            if schema is None:
                schema = argmap()
                if len(self._instances) < _MAX_MEMO:
                    schema = self._instances.setdefault(argmap, schema)
            return schema
        return super()._get_schema(argmap, req)


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's ``Blueprint`` whose ``@arguments`` parse with one ``SchemaOnceParser`` per
    process; every API blueprint of the service is one of these (tests/unit/test_envelope.py)."""

    ARGUMENTS_PARSER = SchemaOnceParser()
