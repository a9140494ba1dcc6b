"""Federation membership: keys, invites, certificates every peer verifies offline, revocations,
durable state, and the audit log.

Pure objects over the protobuf messages of proto/v1/membership.proto; no networking. The daemon,
the gossip validator and the admin API wire them in (see docs/membership.md):

    issuer, descriptor = create_federation("demo", schedule="sync")
    store.save_membership(descriptor, issue_certificate(issuer, identity.public_key), issuer=issuer)
    invite, record = issue_invite(issuer, max_uses=1, issuer_multiaddrs=addrs)
    store.add_invite(record); token = encode_token(invite)
    # joiner                                  # issuer
    invite = parse_token(token)
    request = make_join_request(invite, key)  response = store.redeem(request)
    cert, descriptor = accept_join_response(response, invite, key)
    # every peer, per message (cached, thread-safe):
    reason = policy.check(federation_id, sender_key, envelope_certificate, roles={CONTRIBUTOR})

Peer input failing a check raises `fednode.node.envelope.Rejected` (or yields its RejectReason).
"""

from fednode.node.membership.audit import (
    AuditLog,
    audit_files,
    read_audit_files,
    read_audit_log,
    verify_audit_chain,
    verify_audit_files,
)
from fednode.node.membership.certificates import (
    CONTRIBUTOR,
    DEFAULT_CERTIFICATE_TTL_MS,
    DEFAULT_CLOCK_SKEW_MS,
    OBSERVER,
    RELAY,
    VerifiedCertificate,
    issue_certificate,
    verify_certificate,
    verify_certificate_chain,
)
from fednode.node.membership.errors import InvalidInvite, JoinRefused, MembershipError, MembershipStateError
from fednode.node.membership.federation import (
    Issuer,
    create_federation,
    delegate_admin,
    verify_delegation,
    verify_descriptor,
)
from fednode.node.membership.invites import (
    DEFAULT_INVITE_TTL_MS,
    DEFAULT_JOIN_SKEW_MS,
    InviteRecord,
    Redemption,
    accept_join_response,
    encode_token,
    issue_invite,
    make_join_request,
    parse_token,
    redeem_invite,
    verify_invite,
)
from fednode.node.membership.policy import TrustPolicy
from fednode.node.membership.revocations import (
    REVOCATION_RECORD_NAMESPACE,
    decode_revocation_list,
    encode_revocation_list,
    revocation_record_key,
    revoke,
    select_revocation_record,
    validate_revocation_record,
    verify_revocation,
)
from fednode.node.membership.signing import SIGNING_DOMAIN, federation_id_for, signing_input
from fednode.node.membership.store import FederationState, MembershipStore

__all__ = [
    "CONTRIBUTOR",
    "DEFAULT_CERTIFICATE_TTL_MS",
    "DEFAULT_CLOCK_SKEW_MS",
    "DEFAULT_INVITE_TTL_MS",
    "DEFAULT_JOIN_SKEW_MS",
    "OBSERVER",
    "RELAY",
    "REVOCATION_RECORD_NAMESPACE",
    "SIGNING_DOMAIN",
    "AuditLog",
    "FederationState",
    "InvalidInvite",
    "InviteRecord",
    "Issuer",
    "JoinRefused",
    "MembershipError",
    "MembershipStateError",
    "MembershipStore",
    "Redemption",
    "TrustPolicy",
    "VerifiedCertificate",
    "accept_join_response",
    "audit_files",
    "create_federation",
    "decode_revocation_list",
    "delegate_admin",
    "encode_revocation_list",
    "encode_token",
    "federation_id_for",
    "issue_certificate",
    "issue_invite",
    "make_join_request",
    "parse_token",
    "read_audit_files",
    "read_audit_log",
    "redeem_invite",
    "revocation_record_key",
    "revoke",
    "select_revocation_record",
    "signing_input",
    "validate_revocation_record",
    "verify_audit_chain",
    "verify_audit_files",
    "verify_certificate",
    "verify_certificate_chain",
    "verify_delegation",
    "verify_descriptor",
    "verify_invite",
    "verify_revocation",
]
