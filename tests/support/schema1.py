"""Signed Docker schema1 manifests ("prettyjws") for tests, laid out as libtrust wrote them."""

from __future__ import annotations

import base64
import json


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def sign(payload: bytes, extra: bytes = b"") -> bytes:
    """``payload`` as a signed body: the signatures go before its last line
    (the signature itself is fake; imgpull, as docker, only checks the
    digest). ``extra`` goes between the signed part and the signatures,
    unsigned, as in moby's extra_data_manifest fixture."""
    cut = payload.rindex(b"\n")
    head, tail = payload[:cut], payload[cut:]
    protected = b64url(json.dumps({"formatLength": len(head), "formatTail": b64url(tail)}).encode())
    sig = (
        ',\n   "signatures": [{"header": {"alg": "ES256"}, "signature": "c2ln", '
        f'"protected": "{protected}"}}]'
    )
    return head + extra + sig.encode() + tail
