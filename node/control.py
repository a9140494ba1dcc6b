"""The daemon's side of the admin API: status, peers, federation lifecycle, model export.

`NodeControl` implements `fednode.node.admin.AdminBackend`. It does not know the daemon: it
reads the node through `NodeView` and acts on it through `NodeLifecycle`, two narrow interfaces
declared here (the daemon implements both; tests/node/admin_conformance.py has mypy check it).
Federation lifecycle (create / join / leave / revoke) goes through the membership library
(`fednode.node.membership`) and `NodeLifecycle.switch_federation`, which stops the current
training session and starts the new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from fednode.node import __version__
from fednode.node.admin import AdminError, EventBus
from fednode.node.config import KNOWN_CODECS, KNOWN_RULES, FednodeConfig
from fednode.node.envelope import Rejected, open_envelope, seal
from fednode.node.errors import FednodeError
from fednode.node.federation.outer_config import config_from_proto, config_to_proto
from fednode.node.federation.settings import exchange_problem
from fednode.node.membership import (
    CONTRIBUTOR,
    InvalidInvite,
    JoinRefused,
    MembershipError,
    accept_join_response,
    create_federation,
    encode_token,
    issue_certificate,
    issue_invite,
    make_join_request,
    parse_token,
    revoke,
)
from fednode.node.membership.federation import MAX_MIN_PARTICIPANTS, SCHEDULES, check_budget
from fednode.node.membership.signing import now_ms
from fednode.proto.v1 import admin_pb2, membership_pb2, worker_pb2

if TYPE_CHECKING:
    from fednode.node.identity import Identity
    from fednode.node.membership.store import MembershipStore
    from fednode.node.mesh.port import ReachabilityView
    from fednode.node.mesh.types import PeerInfo


class SessionView(Protocol):
    """The federation the node trains in now."""

    @property
    def federation_id(self) -> str: ...
    @property
    def certified(self) -> bool: ...


class SummaryView(Protocol):
    @property
    def device(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def accuracy(self) -> float: ...
    @property
    def loss(self) -> float: ...


class ProgressView(Protocol):
    """Where the federated session stands, as the training worker last reported it."""

    @property
    def state(self) -> worker_pb2.SessionState: ...
    @property
    def members(self) -> Mapping[str, Any]: ...  # peer id -> worker_pb2.SessionState.Member
    @property
    def contributions(self) -> Mapping[str, Any]: ...  # peer id -> worker_pb2.Contribution


class AdminMesh(Protocol):
    """What the admin backend uses of the mesh (beyond fednode.node.mesh.port.MeshPort)."""

    @property
    def running(self) -> bool: ...
    def peers(self) -> list[PeerInfo]: ...
    def listen_multiaddrs(self) -> list[str]: ...
    def reachability(self) -> ReachabilityView: ...
    async def request(self, target: str, kind: str, data: bytes, *, max_response: int = ...) -> bytes: ...


class ModelSource(Protocol):
    async def export_model(self, fmt: str) -> tuple[bytes, int, str]: ...


class NodeView(Protocol):
    """What the admin backend reads of the node. `display_name` and `bootstrap_hints` are the
    two values it sets (a join names the node and tells it whom to dial first)."""

    display_name: str
    bootstrap_hints: list[str]

    @property
    def config(self) -> FednodeConfig: ...
    @property
    def state_dir(self) -> Path: ...
    @property
    def identity(self) -> Identity | None: ...
    @property
    def summary(self) -> SummaryView | None: ...
    @property
    def round(self) -> int: ...
    @property
    def model_version(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def phase(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def ready(self) -> bool: ...
    @property
    def checkpoint(self) -> worker_pb2.CheckpointHealth: ...
    @property
    def layout_digest(self) -> str: ...
    @property
    def finished(self) -> Mapping[str, Any] | None: ...
    @property
    def progress(self) -> ProgressView | None: ...
    @property
    def session(self) -> SessionView | None: ...
    @property
    def store(self) -> MembershipStore | None: ...
    @property
    def mesh(self) -> AdminMesh | None: ...
    async def training_ranks(self) -> list[Any]: ...  # the torch.distributed job's ranks (worker_pb2.RankHealth)


class NodeLifecycle(Protocol):
    """What the admin backend asks the node to do."""

    async def wait_ready(self, timeout: float) -> bool: ...
    async def check_aggregation(self, rule: str, params: dict[str, Any], min_participants: int, codec: str,
                                schedule: str = ...) -> None: ...
    async def switch_federation(self, federation_id: str | None) -> None: ...
    async def session_progress(self) -> ProgressView | None: ...
    async def member_public_key(self, peer_id: str) -> bytes | None: ...
    async def apply_revocation(self, federation_id: str, revocation: Any, *, spread: bool) -> bool: ...
    async def running_worker(self) -> ModelSource: ...
    async def release_worker_if_idle(self) -> None: ...
    async def ensure_mesh(self) -> AdminMesh: ...
    def request_stop(self, reason: str) -> None: ...
    def record_audit(self, action: str, status: str, **fields: Any) -> None: ...  # failures reported, not raised


log = logging.getLogger("fednode.control")

JOIN_REQUEST_KIND = "join"
MAX_JOIN_MESSAGE = 64 * 1024
MAX_INVITE_TTL_SECONDS = 366 * 86_400
READY_WAIT_SECONDS = 25.0  # a call that needs a ready node waits this long for a starting one


class NodeControl:
    def __init__(self, view: NodeView, lifecycle: NodeLifecycle) -> None:
        self.view = view
        self.lifecycle = lifecycle
        self.events = EventBus()
        self.started = time.monotonic()

    def _store(self) -> MembershipStore:
        if self.view.store is None:  # a ready member node has one
            raise AdminError(grpc.StatusCode.UNAVAILABLE, "the membership store is not open yet; retry once the node is ready")
        return self.view.store

    def _identity(self) -> Identity:
        if self.view.identity is None:  # loaded in the node's first start-up phase
            raise AdminError(grpc.StatusCode.UNAVAILABLE, "the node's identity is not loaded yet; retry in a moment")
        return self.view.identity

    def _cli(self, command: str) -> str:
        """A command line for hints: with --state-dir unless this daemon uses the default one."""
        d = self.view
        return f"fednode {command}" + (f" --state-dir {d.state_dir}" if d.config.node.state_dir else "")

    # ------------------------------------------------------------------------------ queries
    async def status(self) -> admin_pb2.NodeStatus:
        d = self.view
        ranks = await d.training_ranks()
        summary = d.summary
        mesh = d.mesh
        status = admin_pb2.NodeStatus(
            peer_id=d.identity.peer_id if d.identity else "",
            version=__version__,
            uptime_seconds=int(time.monotonic() - self.started),
            device=summary.device if summary else "",
            task=summary.task if summary else "",
            model_version=d.model_version,
            round=d.round,
            accuracy=summary.accuracy if summary else math.nan,
            loss=summary.loss if summary else math.nan,
            state=d.state,
            state_dir=str(d.state_dir),
            checkpoint_error=d.checkpoint.error,
            checkpoint_failures=d.checkpoint.failures,
            checkpoint_round=d.checkpoint.written_round,
            federations=[s for s in d.store.federation_ids()] if d.store else [],
            phase=d.phase,
            role=d.role,
            ready=d.ready,
            world_size=d.config.training.world_size,
            ranks=[admin_pb2.TrainingRank(rank=r.rank, local_rank=r.local_rank, host=r.host, pid=r.pid, state=r.state,
                                          heartbeat_age_seconds=r.heartbeat_age, rounds=r.rounds) for r in ranks],
        )
        if d.session is not None and d.session.federation_id not in status.federations:
            status.federations.append(d.session.federation_id)
        if mesh is not None and mesh.running:
            status.listen_multiaddrs.extend(mesh.listen_multiaddrs())
            status.reachability = mesh.reachability().status
            status.connected_peers = len(mesh.peers())
        else:
            status.reachability = "unknown"
        return status

    async def peers(self) -> list[admin_pb2.PeerStatus]:
        d = self.view
        if d.mesh is None or not d.mesh.running:
            return []
        progress = await self.lifecycle.session_progress()
        members = progress.members if progress is not None else {}
        contributions = progress.contributions if progress is not None else {}
        result = []
        for peer in sorted(d.mesh.peers(), key=lambda p: p.peer_id):
            member = members.get(peer.peer_id)
            contribution = contributions.get(peer.peer_id)
            result.append(admin_pb2.PeerStatus(
                peer_id=peer.peer_id,
                multiaddrs=list(peer.addrs),
                connection=peer.connection,
                latency_ms=peer.latency_ms if peer.latency_ms is not None else -1.0,
                last_seen_unix_ms=int(peer.last_seen * 1000),
                reputation=contribution.reputation if contribution else 1.0,
                display_name=member.display_name if member else "",
                federations=[d.session.federation_id] if member is not None and d.session else [],
                model_version=member.model_version if member else 0,
            ))
        return result

    async def federations(self) -> list[admin_pb2.FederationStatus]:
        d = self.view
        await self.lifecycle.session_progress()
        result = []
        ids = list(d.store.federation_ids()) if d.store else []
        if d.session is not None and d.session.federation_id not in ids:
            ids.append(d.session.federation_id)
        for federation_id in ids:
            result.append(self._federation_status(federation_id))
        return result

    async def federation(self, federation_id: str) -> admin_pb2.FederationStatus:
        federation_id = self._resolve(federation_id)
        await self.lifecycle.session_progress()
        return self._federation_status(federation_id)

    def _resolve(self, federation_id: str) -> str:
        """A full id from a full id, a unique prefix of at least 8 characters, or the name of
        exactly one federation this node belongs to."""
        if not federation_id:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "name a federation (its id, an id prefix or its name)")
        known = set(self.view.store.federation_ids()) if self.view.store else set()
        if self.view.session is not None:
            known.add(self.view.session.federation_id)
        if federation_id in known:
            return federation_id
        matches = [k for k in known if len(federation_id) >= 8 and k.startswith(federation_id)]
        if not matches and self.view.store is not None:
            for candidate in sorted(known & set(self.view.store.federation_ids())):
                descriptor = self.view.store.descriptor(candidate)
                if descriptor is not None and descriptor.name == federation_id:
                    matches.append(candidate)
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise AdminError(grpc.StatusCode.NOT_FOUND,
                             f"this node is not a member of federation {federation_id!r}; see `{self._cli('federation list')}`")
        raise AdminError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"{federation_id!r} matches several federations; give (more characters of) the id")

    def _federation_status(self, federation_id: str) -> admin_pb2.FederationStatus:
        d = self.view
        status = admin_pb2.FederationStatus()
        state = d.store.load(federation_id) if d.store and federation_id in d.store.federation_ids() else None
        if state is not None:
            if state.descriptor is not None:
                status.descriptor.CopyFrom(state.descriptor)
            if state.certificate is not None:
                status.certificate.CopyFrom(state.certificate)
            status.role = "owner" if state.issuer is not None else "contributor"
        else:  # an open federation named in config
            status.descriptor.federation_id = federation_id
            status.descriptor.name = federation_id
            status.descriptor.aggregator = d.config.aggregation.rule
            status.descriptor.schedule = d.config.federation.schedule
            status.descriptor.codec = d.config.compression.codec
            status.descriptor.min_participants = d.config.federation.min_participants
            outer = d.config.aggregation.outer_config()
            if not outer.is_identity:
                status.descriptor.outer.CopyFrom(config_to_proto(outer))
            status.role = "contributor"
        active = d.session is not None and d.session.federation_id == federation_id
        finished = d.finished if active else (d.store.finished(federation_id) if state is not None and d.store else None)
        if finished is not None:
            status.finished, status.finished_reason = True, str(finished.get("reason", ""))
        if active and d.progress is not None:
            session_state = d.progress.state
            status.round = session_state.round
            status.model_version = session_state.model_version
            status.participants.extend(sorted(session_state.expected))
            if session_state.group_id:
                status.group_id = session_state.group_id
        return status

    # ------------------------------------------------------------------------------ lifecycle
    async def _ready_member(self) -> None:
        """Lifecycle calls need a member node that is ready (a starting one is waited for)."""
        d = self.view
        if d.role != "member":
            raise AdminError(grpc.StatusCode.FAILED_PRECONDITION,
                             "this is a bootstrap node (mesh only); run federation commands on a member node")
        if not await self.lifecycle.wait_ready(READY_WAIT_SECONDS):
            raise AdminError(grpc.StatusCode.UNAVAILABLE,
                             f"the daemon is {d.state}{f' ({d.phase})' if d.phase else ''}; wait for it "
                             f"({self._cli('status --wait')}) and retry")

    async def create_federation(self, request: admin_pb2.CreateFederationRequest) -> admin_pb2.FederationStatus:
        await self._ready_member()
        d = self.view
        if d.session is not None and d.session.certified:
            raise AdminError(grpc.StatusCode.FAILED_PRECONDITION,
                             f"this node trains in federation {d.session.federation_id[:16]}; leave it first "
                             f"({self._cli(f'federation leave {d.session.federation_id[:16]}')})")
        config = d.config
        aggregator = request.aggregator or config.aggregation.rule
        codec = request.codec or config.compression.codec
        schedule = request.schedule or config.federation.schedule
        exchange = request.exchange or config.federation.exchange
        min_participants = request.min_participants or config.federation.min_participants
        params = request.aggregator_params_json or json.dumps({"f": config.aggregation.f, **config.aggregation.params})
        try:
            if not request.name.strip():
                raise ValueError("a federation needs a name")
            if aggregator not in KNOWN_RULES:
                raise ValueError(f"unknown aggregation rule {aggregator!r}; known rules: {', '.join(KNOWN_RULES)}")
            if codec not in KNOWN_CODECS:
                raise ValueError(f"unknown codec {codec!r}; known codecs: {', '.join(KNOWN_CODECS)}")
            if schedule not in SCHEDULES:
                raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
            if not 1 <= min_participants <= MAX_MIN_PARTICIPANTS:
                raise ValueError(f"min_participants must be between 1 and {MAX_MIN_PARTICIPANTS}, got {min_participants}")
            check_budget(request.max_rounds, request.target_accuracy, request.until_unix_ms, now_ms())
            decoded = json.loads(params)
            if not isinstance(decoded, dict):
                raise ValueError("the rule parameters must be a JSON object")
            await self.lifecycle.check_aggregation(aggregator, decoded, min_participants, codec, schedule)
            problem = exchange_problem(exchange, schedule, aggregator, decoded,
                                       config.federation.butterfly_parts or min_participants)
            if problem is not None:
                raise ValueError(problem)
            outer = (config_from_proto(request.outer) if request.HasField("outer") and request.outer.name
                     else config.aggregation.outer_config())
            issuer, descriptor = create_federation(
                request.name,
                task=config.task.name,
                model_layout_digest=d.layout_digest,
                aggregator=aggregator,
                aggregator_params_json=json.dumps(decoded, sort_keys=True),
                schedule=schedule,
                min_participants=min_participants,
                codec=codec,
                private=request.private,
                max_rounds=request.max_rounds,
                target_accuracy=request.target_accuracy,
                until_unix_ms=request.until_unix_ms,
                outer=None if outer.is_identity else config_to_proto(outer),
                exchange=exchange,
            )
        except (ValueError, TypeError, MembershipError) as exc:
            await self.lifecycle.release_worker_if_idle()
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, f"cannot create the federation: {exc}") from exc
        certificate = issue_certificate(issuer, self._identity().public_key, display_name=d.display_name)
        self._store().save_membership(descriptor, certificate, issuer=issuer)
        self.events.publish("join", federation_id=descriptor.federation_id, peer_id=self._identity().peer_id,
                            detail=f"created federation {descriptor.name!r}")
        await self.lifecycle.switch_federation(descriptor.federation_id)
        return self._federation_status(descriptor.federation_id)

    async def create_invite(self, request: admin_pb2.CreateInviteRequest) -> admin_pb2.CreateInviteResponse:
        await self._ready_member()
        if request.ttl_seconds > MAX_INVITE_TTL_SECONDS:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT,
                             f"ttl_seconds must be at most {MAX_INVITE_TTL_SECONDS} (366 days), got {request.ttl_seconds}")
        federation_id = self._resolve(request.federation_id)
        state = self._store().load(federation_id)
        if state.issuer is None:
            raise AdminError(grpc.StatusCode.PERMISSION_DENIED,
                             "this node does not hold the federation key (or an admin delegation); "
                             "ask the federation's owner for an invite")
        mesh = await self.lifecycle.ensure_mesh()
        invite, record = issue_invite(
            state.issuer,
            ttl_ms=(request.ttl_seconds or 86_400) * 1000,
            max_uses=request.max_uses,
            issuer_multiaddrs=tuple(mesh.listen_multiaddrs()),
            issuer_peer_id=self._identity().peer_id,
        )
        self._store().add_invite(record)
        return admin_pb2.CreateInviteResponse(token=encode_token(invite), expires_unix_ms=invite.expires_unix_ms)

    async def join_federation(self, request: admin_pb2.JoinFederationRequest) -> admin_pb2.FederationStatus:
        await self._ready_member()
        d = self.view
        try:
            invite = parse_token(request.token.strip())
        except InvalidInvite as exc:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, f"unusable invite token: {exc}") from exc
        if d.session is not None and d.session.federation_id != invite.federation_id and d.session.certified:
            raise AdminError(grpc.StatusCode.FAILED_PRECONDITION,
                             f"this node trains in federation {d.session.federation_id[:16]}; leave it first")
        if invite.federation_id in self._store().federation_ids():
            raise AdminError(grpc.StatusCode.ALREADY_EXISTS, "this node is already a member of that federation")
        mesh = await self.lifecycle.ensure_mesh()
        # An idle node has no worker yet: start it meanwhile (it trains once joined, and it knows
        # the model's layout, which must be the federation's).
        worker = asyncio.ensure_future(self.lifecycle.running_worker())
        worker.add_done_callback(lambda started: started.cancelled() or started.exception())  # errors surface below
        if request.display_name:
            d.display_name = request.display_name
        join = make_join_request(invite, self._identity().public_key, display_name=d.display_name)
        sealed = seal(self._identity(), join)
        errors = []
        response: membership_pb2.JoinResponse | None = None
        for address in invite.issuer_multiaddrs:
            try:
                raw = await mesh.request(address, JOIN_REQUEST_KIND, sealed, max_response=MAX_JOIN_MESSAGE)
                response = membership_pb2.JoinResponse.FromString(raw)
                break
            except Exception as exc:  # try the next address the issuer gave
                errors.append(f"{address}: {exc}")
        if response is None:
            raise AdminError(grpc.StatusCode.UNAVAILABLE,
                             "cannot reach the issuer to redeem the invite (" + "; ".join(errors)[:500]
                             + "); check that the issuing daemon runs and is reachable, then retry")
        try:
            certificate, descriptor = accept_join_response(response, invite, self._identity().public_key)
        except JoinRefused as exc:
            raise AdminError(grpc.StatusCode.PERMISSION_DENIED, f"the issuer refused the invite: {exc}") from exc
        except MembershipError as exc:
            raise AdminError(grpc.StatusCode.FAILED_PRECONDITION, f"the issuer's answer does not verify: {exc}; "
                             "check that the token comes from the federation's owner") from exc
        await worker
        if descriptor.model_layout_digest and descriptor.model_layout_digest != d.layout_digest:
            raise AdminError(grpc.StatusCode.FAILED_PRECONDITION,
                             f"the federation trains task {descriptor.task!r} with another model; "
                             f"start this daemon with that task (task.name) and join again")
        self._store().save_membership(descriptor, certificate, list(response.revocations))
        d.bootstrap_hints = list(response.bootstrap_multiaddrs) or list(invite.issuer_multiaddrs)
        self._store().save_peer_addresses(descriptor.federation_id, d.bootstrap_hints)
        self.events.publish("join", federation_id=descriptor.federation_id, peer_id=self._identity().peer_id,
                            detail=f"joined federation {descriptor.name!r}")
        await self.lifecycle.switch_federation(descriptor.federation_id)
        return self._federation_status(descriptor.federation_id)

    async def answer_join(self, data: bytes, from_peer: str) -> bytes:
        """Issuer side of a join: the request arrives over the mesh's request protocol."""
        d = self.view
        try:
            opened = open_envelope(data, membership_pb2.JoinRequest, max_size=MAX_JOIN_MESSAGE)
        except Rejected as rejected:
            return membership_pb2.JoinResponse(status=membership_pb2.JoinResponse.BAD_REQUEST,
                                               message=f"join request refused: {rejected}").SerializeToString()
        request = opened.message
        assert isinstance(request, membership_pb2.JoinRequest)
        addresses = list(d.mesh.listen_multiaddrs()) if d.mesh is not None else []
        try:
            response = self._store().redeem(request, bootstrap_multiaddrs=addresses,
                                      signer_public_key=opened.sender_public_key)
        except MembershipError as exc:
            log.error("cannot answer a join request: %s", exc)
            response = membership_pb2.JoinResponse(status=membership_pb2.JoinResponse.INTERNAL,
                                                   message="the issuer failed; retry later")
        accepted = response.status == membership_pb2.JoinResponse.OK
        self.events.publish("join", federation_id=request.federation_id, peer_id=opened.sender_peer_id,
                            detail=f"join {'accepted' if accepted else 'refused'}: "
                                   f"{membership_pb2.JoinResponse.Status.Name(response.status)}")
        if accepted:
            self.lifecycle.record_audit("member_joined", "accepted", actor={"id": opened.sender_peer_id},
                                        event={"federation_id": request.federation_id})
        return response.SerializeToString()

    async def leave_federation(self, request: admin_pb2.LeaveFederationRequest) -> None:
        await self._ready_member()
        d = self.view
        federation_id = self._resolve(request.federation_id)
        if d.store and federation_id in d.store.federation_ids():
            d.store.forget(federation_id)
        self.events.publish("leave", federation_id=federation_id, peer_id=self._identity().peer_id, detail="left")
        if d.session is not None and d.session.federation_id == federation_id:
            await self.lifecycle.switch_federation(None)

    async def revoke_member(self, request: admin_pb2.RevokeMemberRequest) -> admin_pb2.RevokeMemberResponse:
        await self._ready_member()
        federation_id = self._resolve(request.federation_id)
        state = self._store().load(federation_id)
        if state.issuer is None:
            raise AdminError(grpc.StatusCode.PERMISSION_DENIED,
                             "only the federation's owner (or an admin) can revoke members")
        key = await self.lifecycle.member_public_key(request.peer_id)
        if key is None:
            raise AdminError(grpc.StatusCode.NOT_FOUND,
                             f"no certificate of peer {request.peer_id} has been seen; it must have sent a message first")
        revocation = revoke(state.issuer, member_public_key=key, reason=request.reason)
        await self.lifecycle.apply_revocation(federation_id, revocation, spread=True)
        self.events.publish("revocation", federation_id=federation_id, peer_id=request.peer_id,
                            detail=request.reason or "revoked")
        return admin_pb2.RevokeMemberResponse(revocation=revocation)

    async def export_model(self, request: admin_pb2.ExportModelRequest) -> tuple[bytes, int, str]:
        await self._ready_member()
        d = self.view
        if request.federation_id and (d.session is None or d.session.federation_id != self._resolve(request.federation_id)):
            raise AdminError(grpc.StatusCode.FAILED_PRECONDITION, "that federation is not the one this node trains now")
        if request.format not in ("", "pt", "safetensors", "raw"):
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT,
                             f'format must be "pt", "safetensors" or "raw", got {request.format!r}')
        try:
            worker = await self.lifecycle.running_worker()  # an idle node starts its worker again for this
            return await worker.export_model(request.format)
        except (ValueError, FednodeError) as exc:
            raise AdminError(grpc.StatusCode.UNAVAILABLE, f"cannot export the model now: {exc}; retry in a moment") from exc

    def shutdown(self) -> None:
        asyncio.get_running_loop().call_soon(self.lifecycle.request_stop, "admin")


__all__ = ["CONTRIBUTOR", "JOIN_REQUEST_KIND", "NodeControl", "NodeLifecycle", "NodeView"]
