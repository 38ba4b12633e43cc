"""Where a client's batches go: its transport, its OAuth token source and its spool."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .transport import Pipelining, Transport

if TYPE_CHECKING:
    from .oauth import OAuthSettings, TokenSource
    from .settings import Settings
    from .spool import Spool


class Route:
    """Where batches go: a transport (``None``: disabled), a token source, a spool."""

    __slots__ = ("pipelining", "spool", "tokens", "transport")

    def __init__(
        self,
        transport: Transport | None,
        tokens: TokenSource | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.transport = transport
        self.tokens = tokens
        self.spool = spool
        # Checked once, through the declared protocol; a spool releases its files at the end
        # of each flush, so a batch cannot stay in flight with one.
        self.pipelining = isinstance(transport, Pipelining) and spool is None


def build_route(
    settings: Settings, transport: Transport | None, oauth: OAuthSettings | None
) -> Route:
    """The route of an enabled client: its transport (urllib3 unless given), tokens, spool."""
    if transport is None:
        from .transport import Urllib3Transport

        transport = Urllib3Transport(
            read_timeout=settings.timeout,
            connect_timeout=settings.connect_timeout,
            proxy=settings.proxy,
            verify=settings.verify,
            ca_certs=settings.ca_certs,
        )
    tokens = None
    if oauth is not None:
        from .oauth import TokenSource  # OAuth users only: it brings pyjwt and cryptography

        tokens = TokenSource(oauth, region=settings.region, transport=transport,
                             retry=settings.retry)  # fmt: skip
    spool = None
    if settings.spool_dir is not None:
        from .spool import Spool  # pathlib and friends: only for those who spool

        spool = Spool(settings.spool_dir, max_bytes=settings.spool_max_bytes)
    return Route(transport, tokens, spool)
