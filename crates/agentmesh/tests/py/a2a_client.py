"""The official A2A Python SDK (a2a-sdk) as a client of a built-in agent, through the
caller's sidecar (tests/a2a.rs).

Usage: a2a_client.py BASE_URL EXPECTED_SPIFFE_ID TRUST_BUNDLE_PEM

Fetches the agent card with the SDK's resolver and verifies its signature with the SDK's own
verifier (a2a.utils.signing.create_signature_verifier); the key is the x5c leaf, accepted only
after its chain verifies against the mesh's trust bundle and its URI SAN is the expected
SPIFFE ID. Then sends one message and asks for the extended card. Prints one JSON object.
"""

import asyncio
import base64
import datetime
import json
import sys

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from a2a.client import ClientConfig, ClientFactory
from a2a.helpers import new_text_message
from a2a.types import GetExtendedAgentCardRequest, Role, SendMessageRequest
from a2a.utils.signing import create_signature_verifier

BASE, EXPECTED, BUNDLE = sys.argv[1], sys.argv[2], sys.argv[3]


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def verified_leaf(x5c, roots):
    """The leaf of an x5c chain that verifies up to one of roots, named EXPECTED."""
    chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in x5c]
    now = datetime.datetime.now(datetime.timezone.utc)
    for cert in chain:
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise ValueError("a certificate of the x5c chain is outside its validity")
    for child, parent in zip(chain, chain[1:]):
        child.verify_directly_issued_by(parent)
    top = chain[-1]
    if not any(top == r or _issued_by(top, r) for r in roots):
        raise ValueError("the x5c chain does not lead to the trust bundle")
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if uris != [EXPECTED]:
        raise ValueError(f"the card was signed by {uris}, not {EXPECTED}")
    return chain[0]


def _issued_by(cert, root):
    try:
        cert.verify_directly_issued_by(root)
        return True
    except Exception:
        return False


def card_verifier(roots, seen):
    keys = {}
    sdk_verify = create_signature_verifier(lambda kid, jku: keys[kid], ["ES256"])

    def verify(card):
        for sig in card.signatures:
            header = json.loads(b64url(sig.protected))
            leaf = verified_leaf(header.get("x5c", []), roots)
            keys[header.get("kid")] = leaf.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            seen["signer"] = EXPECTED
        sdk_verify(card)
        seen["verified"] = True
        # A card changed after signing no longer verifies.
        tampered = type(card)()
        tampered.CopyFrom(card)
        tampered.name = tampered.name + "-evil"
        try:
            sdk_verify(tampered)
            seen["tamper_refused"] = False
        except Exception:
            seen["tamper_refused"] = True

    return verify


async def main():
    with open(BUNDLE, "rb") as f:
        roots = x509.load_pem_x509_certificates(f.read())
    out = {}
    seen = {}
    async with httpx.AsyncClient(timeout=60) as http:
        factory = ClientFactory(ClientConfig(httpx_client=http, streaming=False))
        try:
            client = await factory.create_from_url(
                BASE, signature_verifier=card_verifier(roots, seen)
            )
        except Exception as e:  # noqa: BLE001 - reported to the test
            out["card"] = {"error": f"{type(e).__name__}: {e}", **seen}
            print(json.dumps(out))
            return
        card = client._card
        schemes = {k: v.mtls_security_scheme.description for k, v in card.security_schemes.items()}
        out["card"] = {"name": card.name, "mtls": schemes, **seen}
        try:
            msg = new_text_message("What does agentmesh do?", role=Role.ROLE_USER)
            texts = []
            async for event in client.send_message(SendMessageRequest(message=msg)):
                texts += [p.text for p in event.message.parts if p.text]
            out["send"] = {"text": "\n".join(texts)}
        except Exception as e:  # noqa: BLE001
            out["send"] = {"error": f"{type(e).__name__}: {e}"}
        try:
            ext = await client.get_extended_agent_card(GetExtendedAgentCardRequest())
            out["extended"] = {"skills": [s.id for s in ext.skills]}
        except Exception as e:  # noqa: BLE001
            out["extended"] = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out))


asyncio.run(main())
