"""A local, ECS-compatible HTTP endpoint for testing against the real ``alibabacloud_ecs20140526`` SDK.

No public emulator of Alibaba Cloud ECS exists, so this module serves the subset of the ECS RPC
API (version 2014-05-26) the autoscaler uses, the way the SDK really calls it: a signed ``POST /``
with the action in the ``x-acs-action`` header, every parameter in the query string (lists
flattened as ``Tag.1.Key`` / ``InstanceId.1``), and an ``Authorization: ACS3-HMAC-SHA256 ...``
header. Answers are the JSON documents the SDK's response models parse; errors use Alibaba's
error shape (``Code``, ``Message``, ``RequestId``, ``HostId``) and HTTP status, so the SDK raises
its ordinary ``ClientException`` / ``ServerException`` / ``ThrottlingException``.

Served actions: ``RunInstances`` (``Amount``, ``MinAmount``, ``ClientToken`` idempotency, tags,
stock per instance type and zone, an instance quota, instance quotas per family),
``DescribeInstances`` (tag, id, status, type and zone filters; ``PageNumber``/``PageSize`` or
``NextToken``/``MaxResults`` paging),
``DeleteInstances`` (``Force``; an unknown id fails the whole call with
``InvalidInstanceId.NotFound`` like ECS does), ``StopInstances`` (``StoppedMode`` ``KeepCharging`` or
``StopCharging``, ``ForceStop``), ``StartInstances`` (both with ``BatchOptimization``
``AllTogether``, where one bad id fails the call, or ``SuccessFirst``, with a result per id) and
``DescribeImages`` (tag filter, images added with ``add_image``). Instance state lives in memory:
Pending for ``pending_s``, then Running; a deleted instance is Stopping for ``release_s`` and then
gone; a stopped one is Stopping for ``stop_s``, then Stopped until started (Starting for
``pending_s``, then Running). An economical-mode stop (``StopCharging``) gives the instance's GPU
back to the zone's stock (when ``set_stock`` tracks it), so its start needs stock again and fails
with ``OperationDenied.NoStock`` when there is none, as on ECS. ``visibility_delay_s`` hides a new
instance from ``DescribeInstances`` for a while, the eventual consistency ECS shows after a launch.

Tests inject failures with ``inject`` (``Throttling.User`` twice, ``OperationDenied.NoStock``
for one instance type, ...), fail a seeded fraction of all requests with ``inject_fraction``
(throttling and 5xx answered instead, or a change carried out and its reply lost), limit capacity
with ``set_stock``, ``max_instances`` and ``set_family_quota``, and read what the SDK sent with
``calls``. Signatures are checked for presence and form; given ``credentials`` (access key id →
secret), they are verified too.

Private addresses are handed out from the loopback range (``127.100.0.0/16`` by default): a
test or demo that probes a launched "instance" must never send traffic off this machine.

Usage::

    with EcsEndpoint(vswitches={"vsw-a": "cn-hangzhou-h"}) as ecs:
        config = AlibabaProviderConfig(kind="alibaba", region=ecs.region, endpoint=ecs.endpoint,
                                       protocol="http", vswitches=["vsw-a"], security_group="sg-1")
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

logger = logging.getLogger(__name__)

API_VERSION = "2014-05-26"
SIGNATURE_ALGORITHM = "ACS3-HMAC-SHA256"
#: ECS caps ``Amount``, ``PageSize``/``MaxResults`` and tag counts at these.
MAX_AMOUNT = 100
MAX_PAGE_SIZE = 100
MAX_TAGS = 20
#: ECS's limit on ``UserData``: base64 text of at most 32 KiB.
MAX_USER_DATA = 32768

#: Statuses a delete may act on without ``Force``.
_DELETABLE_WITHOUT_FORCE = {"Stopped", "Stopping"}


class EcsApiError(Exception):
    """An ECS error answer: HTTP ``status`` and Alibaba ``code``/``message``."""

    def __init__(self, code: str, message: str, status: int = 400, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after_ms = retry_after_ms


@dataclass
class Injection:
    """A failure to answer instead of serving ``action``; ``times=None`` means every time."""

    action: str
    code: str
    status: int
    message: str
    times: int | None
    instance_type: str | None = None
    vswitch: str | None = None
    retry_after_ms: int | None = None

    def matches(self, action: str, params: Mapping[str, str]) -> bool:
        """True when this injection applies to a request of ``action`` with ``params``."""
        if self.times is not None and self.times <= 0:
            return False
        if action != self.action:
            return False
        if self.instance_type is not None and params.get("InstanceType") != self.instance_type:
            return False
        return self.vswitch is None or params.get("VSwitchId") == self.vswitch


#: The transient answers ``inject_fraction`` picks from: (code, HTTP status, x-acs-retry-after ms).
TRANSIENT_FAULTS: tuple[tuple[str, int, int | None], ...] = (
    ("Throttling.User", 400, 100),
    ("Throttling", 400, None),
    ("ServiceUnavailable", 503, None),
    ("InternalError", 500, None),
)

#: Actions that change the region: a lost reply means the change happened anyway.
MUTATING_ACTIONS = frozenset({"RunInstances", "DeleteInstances", "StopInstances", "StartInstances"})


@dataclass
class FractionFaults:
    """A seeded fraction of requests answered with a transient error (see ``EcsEndpoint.inject_fraction``)."""

    rate: float
    lost_reply_share: float
    random: Any
    requests: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    lost_replies: dict[str, int] = field(default_factory=dict)

    def draw(self, action: str) -> tuple[tuple[str, int, int | None] | None, bool]:
        """Count the request; return the fault to answer (or None) and whether it comes after serving."""
        self.requests[action] = self.requests.get(action, 0) + 1
        if self.random.random() >= self.rate:
            return None, False
        fault = TRANSIENT_FAULTS[self.random.randrange(len(TRANSIENT_FAULTS))]
        if action in MUTATING_ACTIONS and self.random.random() < self.lost_reply_share:
            self.lost_replies[action] = self.lost_replies.get(action, 0) + 1
            return ("InternalError", 500, None), True
        self.faults[action] = self.faults.get(action, 0) + 1
        return fault, False


@dataclass
class EcsInstance:
    """One instance as the endpoint keeps it (times on the endpoint's monotonic clock)."""

    id: str
    seq: int
    instance_type: str
    zone: str
    vswitch: str
    image: str
    security_group: str | None
    tags: dict[str, str]
    private_ip: str
    created_at: datetime
    created_mono: float
    name: str | None = None
    user_data: str | None = None
    ram_role: str | None = None
    key_pair: str | None = None
    client_token: str | None = None
    deleted_mono: float | None = None
    status_override: str | None = None
    #: When the last ``StopInstances`` took it down (None while it runs) and in which mode.
    stopped_mono: float | None = None
    stopped_mode: str | None = None
    stop_s: float = 0.0
    #: When the last ``StartInstances`` brought it back.
    started_mono: float | None = None

    def status(self, now: float, pending_s: float) -> str:
        """The ECS status at monotonic time ``now``."""
        if self.deleted_mono is not None:
            return "Stopping"
        if self.status_override is not None:
            return self.status_override
        if self.stopped_mono is not None:
            return "Stopping" if now - self.stopped_mono < self.stop_s else "Stopped"
        if self.started_mono is not None:
            return "Starting" if now - self.started_mono < pending_s else "Running"
        return "Pending" if now - self.created_mono < pending_s else "Running"

    def to_api(self, now: float, pending_s: float, region: str) -> dict[str, Any]:
        """The ``Instances.Instance[]`` element of a ``DescribeInstances`` answer."""
        return {
            "InstanceId": self.id,
            "InstanceName": self.name or self.id,
            "InstanceType": self.instance_type,
            "Status": self.status(now, pending_s),
            "RegionId": region,
            "ZoneId": self.zone,
            "ImageId": self.image,
            # ECS reports creation times in UTC to the minute.
            "CreationTime": self.created_at.strftime("%Y-%m-%dT%H:%MZ"),
            "InstanceChargeType": "PostPaid",
            "StoppedMode": (self.stopped_mode or "Not-applicable") if self.stopped_mono is not None
            else "Not-applicable",
            "InstanceNetworkType": "vpc",
            "KeyPairName": self.key_pair or "",
            "VpcAttributes": {
                "VSwitchId": self.vswitch,
                "VpcId": "vpc-local",
                "PrivateIpAddress": {"IpAddress": [self.private_ip]},
                "NatIpAddress": "",
            },
            "SecurityGroupIds": {"SecurityGroupId": [self.security_group] if self.security_group else []},
            "Tags": {"Tag": [{"TagKey": k, "TagValue": v} for k, v in self.tags.items()]},
        }


@dataclass
class EcsImage:
    """A custom image ``DescribeImages`` reports."""

    id: str
    name: str
    created_at: datetime
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "Available"

    def to_api(self) -> dict[str, Any]:
        """The ``Images.Image[]`` element of a ``DescribeImages`` answer."""
        return {
            "ImageId": self.id,
            "ImageName": self.name,
            "ImageOwnerAlias": "self",
            "Status": self.status,
            "CreationTime": self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Tags": {"Tag": [{"TagKey": k, "TagValue": v} for k, v in self.tags.items()]},
        }


@dataclass(frozen=True)
class Call:
    """One request the endpoint received: the action and its query parameters."""

    action: str
    params: Mapping[str, str]
    status: int


def canonical_query(params: Mapping[str, str]) -> str:
    """The ACS3 canonical query string: keys sorted, values percent-encoded (RFC 3986)."""
    return "&".join(f"{quote(k, safe='~')}={quote(params[k], safe='~')}" for k in sorted(params))


def acs3_signature(secret: str, method: str, path: str, params: Mapping[str, str],
                   headers: Mapping[str, str], signed_headers: list[str], payload_hash: str) -> str:
    """The hex ``Signature`` of an ACS3-HMAC-SHA256 request, as Alibaba Cloud documents it.

    ``headers`` maps lower-case header names to their (joined) values.
    """
    canonical_headers = "".join(f"{name}:{headers.get(name, '').strip()}\n" for name in signed_headers)
    canonical_request = "\n".join([
        method, path or "/", canonical_query(params), canonical_headers, ";".join(signed_headers),
        payload_hash,
    ])
    string_to_sign = f"{SIGNATURE_ALGORITHM}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
    return hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()


def _family_of(instance_type: str) -> str:
    """ECS's instance family of a type: ``ecs.gn7i`` for ``ecs.gn7i-c8g1.2xlarge``."""
    prefix, _, rest = instance_type.partition(".")
    return f"{prefix}.{rest.split('.', 1)[0].split('-', 1)[0]}" if rest else instance_type


class EcsEndpoint:
    """An in-memory ECS region served over HTTP on 127.0.0.1; see the module docstring.

    ``vswitches`` maps each vswitch id to its zone; a ``RunInstances`` naming another vswitch
    fails with ``InvalidVSwitchId.NotFound``. ``max_instances`` is the account's instance quota
    (live instances, deleting ones included): a ``RunInstances`` that would pass it fails whole
    with ``QuotaExceed.ElasticQuota``. ``credentials`` (access key id → secret), when given,
    makes the endpoint verify every signature. All methods are thread-safe.
    """

    def __init__(
        self,
        *,
        region: str = "cn-hangzhou",
        vswitches: Mapping[str, str] | None = None,
        pending_s: float = 0.0,
        release_s: float = 0.0,
        stop_s: float = 0.0,
        visibility_delay_s: float = 0.0,
        max_instances: int | None = None,
        credentials: Mapping[str, str] | None = None,
        address_network: str = "127.100.0.0/16",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.region = region
        self.vswitches: dict[str, str] = dict(
            vswitches if vswitches is not None else {"vsw-a": f"{region}-h", "vsw-b": f"{region}-i"}
        )
        self.pending_s = pending_s
        self.release_s = release_s
        self.stop_s = stop_s
        self.visibility_delay_s = visibility_delay_s
        self.max_instances = max_instances
        self._credentials = dict(credentials) if credentials is not None else None
        self._host = host
        self._port = port
        self._lock = threading.RLock()
        self._instances: dict[str, EcsInstance] = {}
        self._images: dict[str, EcsImage] = {}
        self._tokens: dict[str, tuple[str, list[str]]] = {}
        self._stock: dict[tuple[str, str], int] = {}
        self._family_quotas: dict[str, int] = {}
        self._injections: list[Injection] = []
        self._fraction: FractionFaults | None = None
        self._calls: list[Call] = []
        self._seq = 0
        self._addresses = ipaddress.ip_network(address_network).hosts()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # Open keep-alive connections, closed by stop() so no handler thread outlives the endpoint.
        self._connections: set[socket.socket] = set()

    # ------------------------------------------------------------------------------- lifecycle
    def start(self) -> EcsEndpoint:
        """Bind (an ephemeral port by default) and serve in a daemon thread."""
        if self._server is not None:
            return self
        server = ThreadingHTTPServer((self._host, self._port), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"ecs-endpoint-{server.server_address[1]}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and release the port (waits at most 5 s)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> EcsEndpoint:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the endpoint must be started)."""
        if self._server is None:
            raise RuntimeError("the ECS endpoint is not started")
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """``host:port``, the form the SDK's ``Config.endpoint`` takes (with ``protocol="http"``)."""
        return f"{self._host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.endpoint}"

    def sdk_client(self) -> Any:
        """A real ``alibabacloud_ecs20140526`` client of this endpoint (http, default credential chain)."""
        from alibabacloud_credentials.client import Client as CredentialClient  # only tests need the SDK here
        from alibabacloud_ecs20140526.client import Client as EcsClient
        from alibabacloud_tea_openapi import models as openapi_models

        return EcsClient(openapi_models.Config(
            region_id=self.region, endpoint=self.endpoint, protocol="http", credential=CredentialClient(),
            connect_timeout=5000, read_timeout=5000,
        ))

    # ------------------------------------------------------------------------------- test knobs
    def inject(self, action: str, *, code: str, status: int = 400, times: int | None = 1,
               message: str | None = None, instance_type: str | None = None, vswitch: str | None = None,
               retry_after_ms: int | None = None) -> None:
        """Answer the next ``times`` matching ``action`` requests with the error ``code``/``status``.

        ``instance_type`` / ``vswitch`` narrow the match to ``RunInstances`` of that type or vswitch;
        ``times=None`` fails every matching request until ``clear_injections``. ``retry_after_ms``
        adds the ``x-acs-retry-after`` header, which makes the SDK raise ``ThrottlingException``.
        """
        with self._lock:
            self._injections.append(Injection(
                action=action, code=code, status=status, times=times,
                message=message or f"injected {code}", instance_type=instance_type, vswitch=vswitch,
                retry_after_ms=retry_after_ms,
            ))

    def inject_fraction(self, rate: float, *, seed: int, lost_reply_share: float = 0.25) -> FractionFaults:
        """Fail a seeded ``rate`` of every request from now on; return the tally it keeps.

        A failed request is answered with one of ``TRANSIENT_FAULTS`` (``Throttling.User`` with
        ``x-acs-retry-after``, plain ``Throttling``, 503, 500) without being served; or, for a
        ``MUTATING_ACTIONS`` request and with probability ``lost_reply_share``, served and then
        answered with ``InternalError`` (the change happened, its reply was lost). ``ClientToken``
        idempotency applies to the retry as on ECS. ``clear_injections`` ends it.
        """
        with self._lock:
            self._fraction = FractionFaults(rate=rate, lost_reply_share=lost_reply_share,
                                            random=random.Random(seed))
            return self._fraction

    def clear_injections(self) -> None:
        """Forget every pending injected failure (the ``inject_fraction`` one too)."""
        with self._lock:
            self._injections.clear()
            self._fraction = None

    def set_stock(self, instance_type: str, zone: str, count: int | None) -> None:
        """Limit how many more ``instance_type`` instances ``zone`` can launch (None: unlimited)."""
        with self._lock:
            if count is None:
                self._stock.pop((instance_type, zone), None)
            else:
                self._stock[(instance_type, zone)] = count

    def set_family_quota(self, family: str, count: int | None) -> None:
        """Limit the live instances of an instance family (``ecs.gn7i``) in the region (None: no limit).

        A ``RunInstances`` of a type of the family that would pass it fails whole with
        ``QuotaExceed.ElasticQuota`` naming the family, as ECS does for a family's vCPU quota.
        """
        with self._lock:
            if count is None:
                self._family_quotas.pop(family, None)
            else:
                self._family_quotas[family] = count

    def stock(self, instance_type: str, zone: str) -> int | None:
        """How many more ``instance_type`` instances ``zone`` can launch or start (None: unlimited)."""
        with self._lock:
            return self._stock.get((instance_type, zone))

    def set_status(self, instance_id: str, status: str | None) -> None:
        """Force an instance's reported status (e.g. ``Stopped``); None returns to the timeline."""
        with self._lock:
            self._instances[instance_id].status_override = status

    def add_image(self, image_id: str, *, name: str | None = None, tags: Mapping[str, str] | None = None,
                  created_at: datetime | None = None, status: str = "Available") -> None:
        """Register a custom image; once any image exists, ``RunInstances`` accepts only known ones."""
        with self._lock:
            self._images[image_id] = EcsImage(id=image_id, name=name or image_id,
                                              created_at=created_at or datetime.now(UTC),
                                              tags=dict(tags or {}), status=status)

    def remove(self, instance_id: str) -> None:
        """Make an instance vanish at once, as if released outside the autoscaler."""
        with self._lock:
            self._instances.pop(instance_id, None)

    def instances(self) -> dict[str, EcsInstance]:
        """A snapshot of every instance not yet released, by id."""
        with self._lock:
            self._sweep()
            return dict(self._instances)

    def created_count(self) -> int:
        """How many instances ``RunInstances`` ever created (released ones included; repeats of a
        ``ClientToken`` create none)."""
        with self._lock:
            return self._seq

    def status_of(self, instance_id: str) -> str | None:
        """The status ``DescribeInstances`` reports for ``instance_id`` now, or None when gone."""
        with self._lock:
            self._sweep()
            inst = self._instances.get(instance_id)
            return inst.status(time.monotonic(), self.pending_s) if inst else None

    def calls(self, action: str | None = None) -> list[Call]:
        """Requests received so far (of ``action`` only, when given), oldest first."""
        with self._lock:
            return [c for c in self._calls if action is None or c.action == action]

    def reset_calls(self) -> None:
        """Forget the request log."""
        with self._lock:
            self._calls.clear()

    # ------------------------------------------------------------------------------- dispatch
    def handle(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        """Serve one already-authenticated request; raise ``EcsApiError`` for an error answer."""
        with self._lock:
            self._sweep()
            for injection in self._injections:
                if injection.matches(action, params):
                    if injection.times is not None:
                        injection.times -= 1
                    raise EcsApiError(injection.code, injection.message, injection.status,
                                      injection.retry_after_ms)
            fault, after = self._fraction.draw(action) if self._fraction is not None else (None, False)
            if fault is not None and not after:
                raise EcsApiError(fault[0], f"injected {fault[0]}", fault[1], fault[2])
            answer = self._serve(action, params)
            if fault is not None:
                raise EcsApiError(fault[0], "injected: the request ran, its reply was lost", fault[1])
            return answer

    def _serve(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        with self._lock:
            handlers: dict[str, Callable[[Mapping[str, str]], dict[str, Any]]] = {
                "RunInstances": self._run_instances,
                "DescribeInstances": self._describe_instances,
                "DeleteInstances": self._delete_instances,
                "StopInstances": self._stop_instances,
                "StartInstances": self._start_instances,
                "DescribeImages": self._describe_images,
            }
            handler = handlers.get(action)
            if handler is None:
                raise EcsApiError("InvalidAction.NotFound", f"Specified api {action} is not found.", 404)
            region = params.get("RegionId")
            if not region:
                raise EcsApiError("MissingRegionId", "RegionId is mandatory for this action.")
            if region != self.region:
                raise EcsApiError("InvalidRegionId.NotFound", f"The region {region} does not exist.", 404)
            return handler(params)

    def record(self, action: str, params: Mapping[str, str], status: int) -> None:
        """Append a request to the log ``calls`` reads."""
        with self._lock:
            self._calls.append(Call(action=action, params=dict(params), status=status))

    def authenticate(self, method: str, path: str, params: Mapping[str, str],
                     headers: Mapping[str, str], body: bytes) -> None:
        """Check the request is signed the way the SDK signs (and verify it, given credentials)."""
        auth = headers.get("authorization", "")
        algorithm, _, rest = auth.partition(" ")
        fields = dict(part.split("=", 1) for part in rest.split(",") if "=" in part)
        required = {"Credential", "SignedHeaders", "Signature"}
        if algorithm != SIGNATURE_ALGORITHM or not required <= set(fields):
            raise EcsApiError("IncompleteSignature", "The request signature does not conform to Alibaba "
                              "Cloud standards (ACS3-HMAC-SHA256 Authorization header expected).")
        payload_hash = headers.get("x-acs-content-sha256", "")
        if payload_hash != hashlib.sha256(body).hexdigest():
            raise EcsApiError("IncompleteSignature", "x-acs-content-sha256 does not match the request body.")
        if self._credentials is None:
            return
        secret = self._credentials.get(fields["Credential"])
        if secret is None:
            raise EcsApiError("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404)
        signed = fields["SignedHeaders"].split(";")
        expected = acs3_signature(secret, method, path, params, headers, signed, payload_hash)
        if not hmac.compare_digest(expected, fields["Signature"]):
            raise EcsApiError("SignatureDoesNotMatch",
                              "Specified signature is not matched with our calculation.")

    # ------------------------------------------------------------------------------- actions
    def _sweep(self) -> None:
        """Release instances whose deletion finished."""
        now = time.monotonic()
        for iid in [i.id for i in self._instances.values()
                    if i.deleted_mono is not None and now - i.deleted_mono >= self.release_s]:
            del self._instances[iid]

    def _run_instances(self, params: Mapping[str, str]) -> dict[str, Any]:
        for required in ("ImageId", "InstanceType", "VSwitchId"):
            if not params.get(required):
                raise EcsApiError(f"Missing{required}", f"{required} is mandatory for this action.")
        image, itype, vswitch = params["ImageId"], params["InstanceType"], params["VSwitchId"]
        amount = _int_param(params, "Amount", 1)
        min_amount = _int_param(params, "MinAmount", amount)
        if not 1 <= amount <= MAX_AMOUNT or not 1 <= min_amount <= amount:
            raise EcsApiError("InvalidParameter.Amount", "Amount must be 1..100 and MinAmount 1..Amount.")
        tags = _tags(params)
        if len(tags) > MAX_TAGS:
            raise EcsApiError("InvalidTagCount", f"At most {MAX_TAGS} tags are allowed.")
        if any(k.startswith(("aliyun", "acs:")) for k in tags):
            raise EcsApiError("InvalidTagKey.Malformed", "Tag keys cannot start with aliyun or acs:.")
        user_data = params.get("UserData")
        if user_data is not None:
            if len(user_data) > MAX_USER_DATA:
                raise EcsApiError("InvalidUserData.SizeExceeded", "UserData exceeds 32 KiB.")
            try:
                base64.b64decode(user_data, validate=True)
            except binascii.Error as exc:
                raise EcsApiError("InvalidUserData.Base64FormatInvalid", "UserData is not base64.") from exc
        token = params.get("ClientToken")
        fingerprint = json.dumps({k: v for k, v in sorted(params.items()) if k != "ClientToken"})
        if token is not None and token in self._tokens:
            seen_fingerprint, ids = self._tokens[token]
            if seen_fingerprint != fingerprint:
                raise EcsApiError("IdempotentParameterMismatch", "The specified parameters are different "
                                  "from before with the same ClientToken.")
            return {"RequestId": _request_id(), "InstanceIdSets": {"InstanceIdSet": list(ids)}}
        return self._create(params, token, fingerprint, image, itype, vswitch, amount, min_amount, tags,
                            user_data)

    def _create(self, params: Mapping[str, str], token: str | None, fingerprint: str, image: str, itype: str,
                vswitch: str, amount: int, min_amount: int, tags: dict[str, str],
                user_data: str | None) -> dict[str, Any]:
        """Make the instances of a ``RunInstances`` that is not a repeat of an earlier one."""
        zone = self.vswitches.get(vswitch)
        if zone is None:
            raise EcsApiError("InvalidVSwitchId.NotFound", f"The VSwitch {vswitch} does not exist.", 404)
        if params.get("ZoneId") and params["ZoneId"] != zone:
            raise EcsApiError("InvalidParameter.Mismatch", "ZoneId does not match the zone of the VSwitch.")
        if self._images and image not in self._images:
            raise EcsApiError("InvalidImageId.NotFound", f"The image {image} does not exist.", 404)
        available = self._stock.get((itype, zone))
        launch = amount if available is None else min(amount, available)
        if launch < min_amount:
            raise EcsApiError("OperationDenied.NoStock",
                              f"The requested resource ({itype} in {zone}) is sold out.", 403)
        family = _family_of(itype)
        limit = self._family_quotas.get(family)
        in_family = sum(1 for i in self._instances.values() if _family_of(i.instance_type) == family)
        if limit is not None and in_family + launch > limit:
            raise EcsApiError("QuotaExceed.ElasticQuota",
                              f"The quota of instance family {family} in {self.region} ({limit}) would be "
                              "exceeded.", 403)
        if self.max_instances is not None and len(self._instances) + launch > self.max_instances:
            raise EcsApiError("QuotaExceed.ElasticQuota",
                              f"The instance quota ({self.max_instances}) would be exceeded.", 403)
        if available is not None:
            self._stock[(itype, zone)] = available - launch
        ids: list[str] = []
        now_wall, now_mono = datetime.now(UTC), time.monotonic()
        for _ in range(launch):
            self._seq += 1
            iid = f"i-{secrets.token_hex(10)}"
            self._instances[iid] = EcsInstance(
                id=iid, seq=self._seq, instance_type=itype, zone=zone, vswitch=vswitch, image=image,
                security_group=params.get("SecurityGroupId"), tags=dict(tags),
                private_ip=str(next(self._addresses)), created_at=now_wall, created_mono=now_mono,
                name=params.get("InstanceName"), user_data=user_data, ram_role=params.get("RamRoleName"),
                key_pair=params.get("KeyPairName"), client_token=token,
            )
            ids.append(iid)
        if token is not None:
            self._tokens[token] = (fingerprint, ids)
        return {"RequestId": _request_id(), "InstanceIdSets": {"InstanceIdSet": ids}}

    def _describe_instances(self, params: Mapping[str, str]) -> dict[str, Any]:
        now = time.monotonic()
        wanted_tags = _tag_filters(params)
        ids_filter: set[str] | None = None
        if params.get("InstanceIds"):
            try:
                ids_filter = set(json.loads(params["InstanceIds"]))
            except (ValueError, TypeError) as exc:
                raise EcsApiError("InvalidInstanceIds.Malformed", "InstanceIds is not a JSON array.") from exc
        selected = [
            inst for inst in sorted(self._instances.values(), key=lambda i: i.seq)
            if now - inst.created_mono >= self.visibility_delay_s
            and (ids_filter is None or inst.id in ids_filter)
            and all(k in inst.tags and (v is None or inst.tags[k] == v) for k, v in wanted_tags)
            and (not params.get("Status") or inst.status(now, self.pending_s) == params["Status"])
            and (not params.get("InstanceType") or inst.instance_type == params["InstanceType"])
            and (not params.get("ZoneId") or inst.zone == params["ZoneId"])
        ]
        body: dict[str, Any] = {"RequestId": _request_id(), "TotalCount": len(selected)}
        if "NextToken" in params or "MaxResults" in params:
            size = _int_param(params, "MaxResults", 10)
            if not 1 <= size <= MAX_PAGE_SIZE:
                raise EcsApiError("InvalidParameter.MaxResults", "MaxResults must be 1..100.")
            after = 0
            if params.get("NextToken"):
                try:
                    after = int(base64.urlsafe_b64decode(params["NextToken"]).decode())
                except (ValueError, binascii.Error) as exc:
                    raise EcsApiError("InvalidParameter.NextToken", "The NextToken is invalid.") from exc
            # The token remembers the last instance served, so pages stay stable while instances
            # are added or released between calls.
            rest = [i for i in selected if i.seq > after]
            page, more = rest[:size], len(rest) > size
            body["MaxResults"] = size
            body["NextToken"] = (base64.urlsafe_b64encode(str(page[-1].seq).encode()).decode()
                                 if more and page else "")
        else:
            number = _int_param(params, "PageNumber", 1)
            size = _int_param(params, "PageSize", 10)
            if number < 1 or not 1 <= size <= MAX_PAGE_SIZE:
                raise EcsApiError("InvalidParameter", "PageNumber must be >= 1 and PageSize 1..100.")
            page = selected[(number - 1) * size: number * size]
            body["PageNumber"], body["PageSize"] = number, size
        body["Instances"] = {"Instance": [i.to_api(now, self.pending_s, self.region) for i in page]}
        return body

    def _delete_instances(self, params: Mapping[str, str]) -> dict[str, Any]:
        ids = _indexed(params, "InstanceId")
        if not ids:
            raise EcsApiError("MissingInstanceId", "InstanceId is mandatory for this action.")
        if len(ids) > MAX_AMOUNT:
            raise EcsApiError("InvalidParameter.InstanceIdCount", "At most 100 instance ids per call.")
        force = params.get("Force", "false").lower() == "true"
        now = time.monotonic()
        # ECS validates the whole batch first: one unknown id fails the call and deletes nothing.
        missing = [iid for iid in ids if iid not in self._instances]
        if missing:
            raise EcsApiError("InvalidInstanceId.NotFound",
                              f"The specified InstanceId does not exist: {missing[0]}", 404)
        for iid in ids:
            status = self._instances[iid].status(now, self.pending_s)
            if not force and status not in _DELETABLE_WITHOUT_FORCE:
                raise EcsApiError("IncorrectInstanceStatus",
                                  f"The current status of the instance {iid} ({status}) does not "
                                  "support this operation; stop it first or set Force.", 403)
        for iid in ids:
            inst = self._instances[iid]
            if inst.deleted_mono is None:
                inst.deleted_mono = now
        self._sweep()
        return {"RequestId": _request_id()}

    def _stop_instances(self, params: Mapping[str, str]) -> dict[str, Any]:
        mode = params.get("StoppedMode", "KeepCharging")
        if mode not in ("KeepCharging", "StopCharging"):
            raise EcsApiError("InvalidParameter.StoppedMode", f"StoppedMode {mode} is not supported.")

        def stop(inst: EcsInstance, now: float) -> None:
            if mode == "StopCharging":  # economical mode: the GPU goes back to the zone's stock
                stock = self._stock.get((inst.instance_type, inst.zone))
                if stock is not None:
                    self._stock[(inst.instance_type, inst.zone)] = stock + 1
            inst.stopped_mono, inst.stopped_mode, inst.stop_s = now, mode, self.stop_s
            inst.started_mono = None

        return self._power(params, "Running", stop)

    def _start_instances(self, params: Mapping[str, str]) -> dict[str, Any]:
        def check(inst: EcsInstance) -> None:
            if inst.stopped_mode == "StopCharging" and self._stock.get((inst.instance_type, inst.zone)) == 0:
                raise EcsApiError("OperationDenied.NoStock", f"The requested resource "
                                  f"({inst.instance_type} in {inst.zone}) is sold out.", 403)

        def start(inst: EcsInstance, now: float) -> None:
            check(inst)
            if inst.stopped_mode == "StopCharging":
                stock = self._stock.get((inst.instance_type, inst.zone))
                if stock is not None:
                    self._stock[(inst.instance_type, inst.zone)] = stock - 1
            inst.started_mono, inst.stopped_mono, inst.stopped_mode = now, None, None

        return self._power(params, "Stopped", start, check)

    def _power(self, params: Mapping[str, str], needed: str, apply: Callable[[EcsInstance, float], None],
               check: Callable[[EcsInstance], None] | None = None) -> dict[str, Any]:
        """Stop or start each ``InstanceId.N`` that is ``needed``; ``AllTogether`` or ``SuccessFirst``."""
        ids = _indexed(params, "InstanceId")
        if not ids:
            raise EcsApiError("MissingInstanceId", "InstanceId is mandatory for this action.")
        if len(ids) > MAX_AMOUNT:
            raise EcsApiError("InvalidParameter.InstanceIdCount", "At most 100 instance ids per call.")
        together = params.get("BatchOptimization", "AllTogether") != "SuccessFirst"
        now = time.monotonic()

        def problem(iid: str) -> EcsApiError | None:
            inst = self._instances.get(iid)
            if inst is None or inst.deleted_mono is not None:
                return EcsApiError("InvalidInstanceId.NotFound",
                                   f"The specified InstanceId does not exist: {iid}", 404)
            status = inst.status(now, self.pending_s)
            if status != needed:
                return EcsApiError("IncorrectInstanceStatus", f"The current status of the instance {iid} "
                                   f"({status}) does not support this operation.", 403)
            if check is not None:
                try:
                    check(inst)
                except EcsApiError as err:
                    return err
            return None

        if together:
            for iid in ids:
                if (err := problem(iid)) is not None:
                    raise err
        answers: list[dict[str, Any]] = []
        for iid in ids:
            err = problem(iid)
            inst = self._instances.get(iid)
            before = inst.status(now, self.pending_s) if inst is not None else ""
            if err is None and inst is not None:
                apply(inst, now)
                answers.append({"InstanceId": iid, "Code": "200", "Message": "success",
                                "PreviousStatus": before, "CurrentStatus": inst.status(now, self.pending_s)})
            else:
                answers.append({"InstanceId": iid, "Code": err.code if err else "UnknownError",
                                "Message": err.message if err else "", "PreviousStatus": before,
                                "CurrentStatus": before})
        return {"RequestId": _request_id(), "InstanceResponses": {"InstanceResponse": answers}}

    def _describe_images(self, params: Mapping[str, str]) -> dict[str, Any]:
        wanted_tags = _tag_filters(params)
        selected = [
            img for img in sorted(self._images.values(), key=lambda i: i.created_at, reverse=True)
            if all(k in img.tags and (v is None or img.tags[k] == v) for k, v in wanted_tags)
            and (not params.get("ImageId") or img.id in params["ImageId"].split(","))
            and (not params.get("Status") or img.status in params["Status"].split(","))
        ]
        number = _int_param(params, "PageNumber", 1)
        size = _int_param(params, "PageSize", 10)
        page = selected[(number - 1) * size: number * size]
        return {"RequestId": _request_id(), "RegionId": self.region, "TotalCount": len(selected),
                "PageNumber": number, "PageSize": size, "Images": {"Image": [i.to_api() for i in page]}}


def _request_id() -> str:
    return str(uuid.uuid4()).upper()


def _int_param(params: Mapping[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise EcsApiError(f"InvalidParameter.{name}", f"{name} must be an integer.") from exc


def _indexed(params: Mapping[str, str], prefix: str) -> list[str]:
    """Values of a flattened list parameter (``InstanceId.1``, ``InstanceId.2``, ...) in index order."""
    found: list[tuple[int, str]] = []
    for key, value in params.items():
        head, _, index = key.partition(".")
        if head == prefix and index.isdigit():
            found.append((int(index), value))
    return [value for _, value in sorted(found)]


def _tags(params: Mapping[str, str]) -> dict[str, str]:
    """``Tag.N.Key`` / ``Tag.N.Value`` pairs of a request, as a dict."""
    return {k: v or "" for k, v in _tag_filters(params)}


def _tag_filters(params: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``(key, value or None)`` for each ``Tag.N`` of a request, in index order."""
    keys: dict[int, str] = {}
    values: dict[int, str] = {}
    for name, value in params.items():
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "Tag" and parts[1].isdigit():
            if parts[2] == "Key":
                keys[int(parts[1])] = value
            elif parts[2] == "Value":
                values[int(parts[1])] = value
    return [(keys[n], values.get(n)) for n in sorted(keys)]


def _make_handler(endpoint: EcsEndpoint) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """Turns one HTTP request into ``EcsEndpoint.handle`` and its answer into JSON."""

        protocol_version = "HTTP/1.1"
        #: An idle keep-alive connection is dropped after this many seconds.
        timeout = 30.0
        # Headers and body go out in two writes; without TCP_NODELAY each keep-alive answer would
        # wait for the client's delayed ACK (~40 ms).
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            with endpoint._lock:
                endpoint._connections.add(self.connection)

        def finish(self) -> None:
            with endpoint._lock:
                endpoint._connections.discard(self.connection)
            super().finish()

        def do_POST(self) -> None:
            self._serve()

        def do_GET(self) -> None:
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            split = urlsplit(self.path)
            params = dict(parse_qsl(split.query, keep_blank_values=True))
            if body and "x-www-form-urlencoded" in (self.headers.get("content-type") or ""):
                # The SDK sends form bodies for some RPC calls; they carry parameters too.
                params.update(parse_qsl(body.decode(), keep_blank_values=True))
            headers = {k.lower(): ",".join(sorted(v.strip() for v in self.headers.get_all(k, [])))
                       for k in set(self.headers.keys())}
            action = headers.get("x-acs-action") or params.get("Action", "")
            request_id = _request_id()
            try:
                if headers.get("x-acs-version", params.get("Version")) != API_VERSION:
                    raise EcsApiError("InvalidVersion", f"Specified parameter Version is not valid "
                                      f"(this endpoint serves {API_VERSION}).")
                # Only the query is signed (a form body is covered by x-acs-content-sha256).
                signed_query = dict(parse_qsl(split.query, keep_blank_values=True))
                endpoint.authenticate(self.command, split.path, signed_query, headers, body)
                answer = endpoint.handle(action, params)
                status, extra = HTTPStatus.OK.value, {}
            except EcsApiError as err:
                status = err.status
                answer = {"RequestId": request_id, "HostId": f"ecs.{endpoint.region}.aliyuncs.com",
                          "Code": err.code, "Message": err.message,
                          "Recommend": f"https://api.aliyun.com/troubleshoot?q={err.code}"}
                extra = {"x-acs-retry-after": str(err.retry_after_ms)} if err.retry_after_ms else {}
            endpoint.record(action, params, status)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-acs-request-id", answer.get("RequestId", request_id))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("ecs-endpoint: " + format, *args)

    return Handler


@contextlib.contextmanager
def dummy_credentials(access_key_id: str | None = "LTAI-test-key-id",
                      access_key_secret: str | None = "test-secret-do-not-log") -> Iterator[tuple[str, str]]:
    """Make the SDK's default credential chain find these keys in the environment, and only there.

    ``None`` leaves the variable unset (to test a chain that finds nothing); the pair yielded
    then holds empty strings.

    Sets ``ALIBABA_CLOUD_ACCESS_KEY_ID``/``_SECRET`` and disables the chain's ECS metadata
    lookup (which would contact 100.100.100.200) and CLI profile, restoring everything after.
    ``alibabacloud_credentials`` copies these variables into ``auth_util`` when it is first
    imported, so the copies are set too: a test that runs after the SDK was imported still
    exercises the real environment-variable provider.
    """
    from alibabacloud_credentials.utils import auth_util  # only tests need the SDK here

    values = {
        "ALIBABA_CLOUD_ACCESS_KEY_ID": ("environment_access_key_id", access_key_id),
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET": ("environment_access_key_secret", access_key_secret),
        "ALIBABA_CLOUD_SECURITY_TOKEN": ("environment_security_token", None),
        "ALIBABA_CLOUD_ECS_METADATA_DISABLED": ("environment_ecs_metadata_disabled", "true"),
        "ALIBABA_CLOUD_CLI_PROFILE_DISABLED": ("environment_cli_profile_disabled", "true"),
    }
    saved_env = {name: os.environ.get(name) for name in values}
    saved_attrs = {attr: getattr(auth_util, attr) for attr, _ in values.values()}
    try:
        for name, (attr, value) in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
            setattr(auth_util, attr, value)
        yield access_key_id or "", access_key_secret or ""
    finally:
        for name, old in saved_env.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old
        for attr, old_attr in saved_attrs.items():
            setattr(auth_util, attr, old_attr)
