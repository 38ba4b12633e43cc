"""The six calls of the tracking protocol, as keyword-only, typed methods (``Analytics``' base).

Each documents its message type and passes its fields, under their wire names, to
``_call``, which the client implements.  Kept apart so the client module stays about
delivery, not signatures.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

from .queue import MessageCallback
from .results import CallResult


class Calls:
    """``identify``, ``track``, ``page``, ``screen``, ``group`` and ``alias``."""

    __slots__ = ()

    def _call(
        self,
        kind: str,
        fields: Mapping[str, object],
        user_id: object,
        anonymous_id: object,
        context: object,
        timestamp: object,
        integrations: object,
        message_id: object,
        callback: MessageCallback | None,
    ) -> CallResult:
        raise NotImplementedError

    def identify(
        self,
        *,
        user_id: str | int | None = None,
        anonymous_id: str | int | None = None,
        traits: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: _dt.datetime | str | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        callback: MessageCallback | None = None,
    ) -> CallResult:
        """Tie a user to their traits (``plan``, ``email``...)."""
        return self._call(
            "identify", {"traits": traits}, user_id, anonymous_id, context, timestamp,
            integrations, message_id, callback,
        )  # fmt: skip

    def track(
        self,
        *,
        event: str,
        user_id: str | int | None = None,
        anonymous_id: str | int | None = None,
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: _dt.datetime | str | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        callback: MessageCallback | None = None,
    ) -> CallResult:
        """Record that a user did something (``event``, e.g. ``"Order Completed"``)."""
        return self._call(
            "track", {"event": event, "properties": properties}, user_id, anonymous_id,
            context, timestamp, integrations, message_id, callback,
        )  # fmt: skip

    def page(
        self,
        *,
        user_id: str | int | None = None,
        anonymous_id: str | int | None = None,
        name: str | None = None,
        category: str | None = None,
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: _dt.datetime | str | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        callback: MessageCallback | None = None,
    ) -> CallResult:
        """Record a page view of a website."""
        return self._call(
            "page", {"name": name, "category": category, "properties": properties}, user_id,
            anonymous_id, context, timestamp, integrations, message_id, callback,
        )  # fmt: skip

    def screen(
        self,
        *,
        user_id: str | int | None = None,
        anonymous_id: str | int | None = None,
        name: str | None = None,
        category: str | None = None,
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: _dt.datetime | str | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        callback: MessageCallback | None = None,
    ) -> CallResult:
        """Record a screen view of a mobile or desktop app."""
        return self._call(
            "screen", {"name": name, "category": category, "properties": properties}, user_id,
            anonymous_id, context, timestamp, integrations, message_id, callback,
        )  # fmt: skip

    def group(
        self,
        *,
        group_id: str | int,
        user_id: str | int | None = None,
        anonymous_id: str | int | None = None,
        traits: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: _dt.datetime | str | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        callback: MessageCallback | None = None,
    ) -> CallResult:
        """Associate a user with a group (a company, an account), with the group's traits."""
        return self._call(
            "group", {"groupId": group_id, "traits": traits}, user_id, anonymous_id, context,
            timestamp, integrations, message_id, callback,
        )  # fmt: skip

    def alias(
        self,
        *,
        user_id: str | int,
        previous_id: str | int,
        context: Mapping[str, Any] | None = None,
        timestamp: _dt.datetime | str | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
        callback: MessageCallback | None = None,
    ) -> CallResult:
        """Merge a previous identity (often an anonymous id) into ``user_id``."""
        return self._call(
            "alias", {"previousId": previous_id}, user_id, None, context, timestamp,
            integrations, message_id, callback,
        )  # fmt: skip
