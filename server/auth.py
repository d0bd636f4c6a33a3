"""Bearer-token authentication: every RPC but health (and, by choice, reflection) carries
`authorization: Bearer <token>` metadata naming a token of `--auth-token-file`.

The file holds one token per line (blank lines and `#` comments ignored); the server
rereads it on SIGHUP, so tokens are added and revoked without a restart. A token is
compared with every token of the file in constant time (`hmac.compare_digest`), so neither
a match's position nor a near miss shows in the timing.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from pathlib import Path

import grpc

from anogan_inspect.tokens import read_tokens

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."
MISSING = ("this server requires a token: send `authorization: Bearer <token>` metadata "
           "(anogan-client --token-file, grpcurl -H 'authorization: Bearer ...')")
REFUSED = "the token is not one this server accepts"


class TokenStore:
    """The accepted tokens, read from a file and reread on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._tokens: list[bytes] = []
        self.reload()

    def reload(self) -> int:
        """Reread the file; ValueError (naming it) when it is unreadable or holds no token,
        and the tokens held so far stay. Returns how many tokens it holds."""
        self._tokens = [token.encode() for token in read_tokens(self.path)]
        return len(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def accepts(self, token: str) -> bool:
        candidate = token.encode()
        matched = False
        for known in self._tokens:  # every one, whatever matched: constant time
            matched |= hmac.compare_digest(candidate, known)
        return matched


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` entry, if any."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for any call without an accepted token, except health checks (load
    balancers and Kubernetes probe without credentials) and, with `open_reflection`,
    reflection."""

    def __init__(self, tokens: TokenStore, open_reflection: bool = False,
                 admin: TokenStore | None = None):
        """admin: --admin-token-file's tokens, accepted for every call too."""
        self.tokens, self.open_reflection, self.admin = tokens, open_reflection, admin

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(HEALTH_PREFIX) or (
                self.open_reflection and method.startswith(REFLECTION_PREFIX)):
            return await continuation(handler_call_details)
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is not None and (self.tokens.accepts(token) or (
                self.admin is not None and self.admin.accepts(token))):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: UNIMPLEMENTED as without tokens
            return None
        return _refusing(handler, MISSING if token is None else REFUSED)


def _refusing(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that ends the call with UNAUTHENTICATED."""
    async def refuse(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kind = {(False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler}[
        (handler.request_streaming, handler.response_streaming)]
    return kind(refuse, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
