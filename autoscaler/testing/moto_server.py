"""A moto server on 127.0.0.1 for tests of the AWS adapters, with AMI and instance-type validation on.

The AWS adapters are tested against moto in *server mode*: boto3 talks HTTP to a
``moto.server.ThreadedMotoServer`` bound to loopback on a free port, exactly as it would talk to
EC2 or ELBv2, so requests go through botocore's real serializer, retry handler and event hooks.

Usage as a context manager::

    with running_moto_server() as moto:
        ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint_url)
        ...
        moto.reset()            # forget every resource between tests

or through the pytest fixtures below, bound to names in a test module (``moto_server =
moto_fixtures.moto_server`` and so on, so pytest finds them): ``moto_server`` starts one server
per test module; ``moto`` resets its state before each test; ``ec2_sandbox`` builds a VPC with
two zonal subnets, a security group, an instance profile and a base AMI (``make_ec2_sandbox``).
``bake_model_image`` registers an AMI tagged with a model version, and ``RequestFaults`` with
``aws_error_response`` stands in for the service on chosen requests (throttling, capacity and
quota errors) through botocore's ``before-send`` event.

While the server runs, the process environment carries dummy credentials
(``AWS_ACCESS_KEY_ID=testing`` ...), ``AWS_EC2_METADATA_DISABLED=true`` (so botocore never asks the
instance metadata address for credentials or a region) and moto's validation switches; everything
is restored when it stops. moto keeps its state in process-wide backends, so two servers in one
process share resources: run one at a time.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

#: moto's switches for validating ``RunInstances`` arguments (names from moto's ``settings.py``):
#: an unknown AMI id or instance type is rejected as EC2 would, instead of being accepted silently.
MOTO_VALIDATION_ENV: Mapping[str, str] = {
    "MOTO_ENABLE_AMI_VALIDATION": "true",
    "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true",
}

#: Credentials and settings boto3's standard chain picks up from the environment in tests. The
#: values are moto's conventional dummies; no real account is ever involved.
DUMMY_AWS_ENV: Mapping[str, str] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Without this, a chain that finds no credentials would try the metadata service, which is
    # not on loopback.
    "AWS_EC2_METADATA_DISABLED": "true",
}

#: Environment variables removed while the server runs, so a developer's own profile, config
#: file or endpoint override can neither leak into nor redirect a test.
_UNSET_ENV = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2",
              "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", "AWS_CONFIG_FILE",
              "AWS_SHARED_CREDENTIALS_FILE")

# moto reads its validation switches into module constants when ``moto.settings`` is first
# imported; ``run_instances`` then reads the constants. Setting the environment is enough when
# moto is not imported yet, patching the constants covers a process that already imported it.
_SETTINGS_ATTRS = {
    "MOTO_ENABLE_AMI_VALIDATION": "ENABLE_AMI_VALIDATION",
    "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "EC2_ENABLE_INSTANCE_TYPE_VALIDATION",
}


@dataclass(frozen=True)
class MotoServer:
    """A running moto server: where it listens and how to reset it."""

    host: str
    port: int

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``: pass as boto3's ``endpoint_url``."""
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        """Forget every resource in every region (moto's ``/moto-api/reset``)."""
        httpx.post(f"{self.endpoint_url}/moto-api/reset", timeout=10.0).raise_for_status()


@contextmanager
def _patched_environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in (*env, *_UNSET_ENV)}
    try:
        for key in _UNSET_ENV:
            os.environ.pop(key, None)
        os.environ.update(env)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _moto_validation_on() -> Iterator[None]:
    from moto import settings

    saved: dict[str, Any] = {attr: getattr(settings, attr) for attr in _SETTINGS_ATTRS.values()}
    try:
        for attr in _SETTINGS_ATTRS.values():
            setattr(settings, attr, True)
        yield
    finally:
        for attr, value in saved.items():
            setattr(settings, attr, value)


@contextmanager
def running_moto_server(
    *, validate: bool = True, stock_amis: bool = False, env: Mapping[str, str] | None = None
) -> Iterator[MotoServer]:
    """Run a moto server on 127.0.0.1 (a free port) for the ``with`` block, then stop it.

    ``validate`` turns on moto's AMI and instance-type validation. ``stock_amis`` loads moto's
    ~1,300 stock AMIs into every fresh region (about a second after each reset; off by default:
    ``make_ec2_sandbox`` registers the one base AMI tests need). ``env`` adds to (or overrides)
    ``DUMMY_AWS_ENV`` for the block. The server's state is reset on exit, so resources do not
    leak into a later server in the same process.
    """
    environment = {**DUMMY_AWS_ENV, **(MOTO_VALIDATION_ENV if validate else {}),
                   "MOTO_EC2_LOAD_DEFAULT_AMIS": "true" if stock_amis else "false", **(env or {})}
    with _patched_environment(environment):
        # Imported only now, so a first import of moto sees the validation switches.
        from moto.server import ThreadedMotoServer

        with _moto_validation_on() if validate else nullcontext(), _quiet_request_log():
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            try:
                host, port = server.get_host_and_port()
                moto = MotoServer(host=host, port=port)
                yield moto
                moto.reset()
            finally:
                server.stop()


@contextmanager
def _quiet_request_log() -> Iterator[None]:
    # werkzeug logs every request at INFO; a test run needs only its warnings.
    log = logging.getLogger("werkzeug")
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    """One validating moto server per test module, stopped after the module's last test."""
    with running_moto_server() as server:
        yield server


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """The module's moto server, reset to an empty account before the test."""
    moto_server.reset()
    return moto_server


# ------------------------------------------------------------------------------------ an EC2 sandbox
@dataclass(frozen=True)
class Ec2Sandbox:
    """What a provider test launches into: a VPC with one subnet per zone, a security group, an
    instance profile and a base AMI (untagged, owned by the account), all created on moto."""

    endpoint_url: str
    region: str
    vpc_id: str
    zones: tuple[str, ...]
    subnets: tuple[str, ...]
    security_group: str
    instance_profile: str
    base_image: str

    def client(self, service: str) -> Any:
        """A plain boto3 client of ``service`` on the sandbox's moto server (for set-up and checks)."""
        import boto3

        return boto3.client(service, region_name=self.region, endpoint_url=self.endpoint_url)  # type: ignore[call-overload]


def make_ec2_sandbox(server: MotoServer, *, region: str = "us-east-1", zones: int = 2,
                     instance_profile: str = "asr-node") -> Ec2Sandbox:
    """Create a VPC (10.20.0.0/16) with ``zones`` subnets in different zones, a security group,
    an instance profile with a role, and register a base AMI (a plain x86_64 HVM image)."""
    import boto3

    ec2 = boto3.client("ec2", region_name=region, endpoint_url=server.endpoint_url)
    iam = boto3.client("iam", region_name=region, endpoint_url=server.endpoint_url)
    zone_names = tuple(z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"])[:zones]
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = tuple(
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{n}.0/24", AvailabilityZone=zone)["Subnet"]["SubnetId"]
        for n, zone in enumerate(zone_names, start=1)
    )
    group = ec2.create_security_group(GroupName="asr-nodes", Description="ASR nodes", VpcId=vpc)["GroupId"]
    role = f"{instance_profile}-role"
    iam.create_role(RoleName=role, AssumeRolePolicyDocument='{"Version":"2012-10-17"}')
    iam.create_instance_profile(InstanceProfileName=instance_profile)
    iam.add_role_to_instance_profile(InstanceProfileName=instance_profile, RoleName=role)
    base = ec2.register_image(
        Name="base-linux", Architecture="x86_64", VirtualizationType="hvm", RootDeviceName="/dev/xvda",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"VolumeSize": 20}}],
    )["ImageId"]
    return Ec2Sandbox(endpoint_url=server.endpoint_url, region=region, vpc_id=vpc, zones=zone_names,
                      subnets=subnets, security_group=group, instance_profile=instance_profile,
                      base_image=base)


def bake_model_image(sandbox: Ec2Sandbox, model_version: str, *, name: str | None = None) -> str:
    """Register an AMI tagged ``autoscaler:model-version=model_version`` as the Packer template would:
    run a builder instance from the base AMI, ``CreateImage`` from it, terminate the builder."""
    from autoscaler.domain import TAG_MODEL_VERSION

    ec2 = sandbox.client("ec2")
    builder = ec2.run_instances(ImageId=sandbox.base_image, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                                SubnetId=sandbox.subnets[0])["Instances"][0]["InstanceId"]
    image = ec2.create_image(
        InstanceId=builder, Name=name or f"asr-node-{model_version}",
        TagSpecifications=[{"ResourceType": "image",
                            "Tags": [{"Key": TAG_MODEL_VERSION, "Value": model_version}]}],
    )["ImageId"]
    ec2.terminate_instances(InstanceIds=[builder])
    return str(image)


# ------------------------------------------------------------------------------------ fault injection
class _Body:
    """The ``raw`` of an ``AWSResponse``: botocore reads the body through ``stream()``."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def aws_error_response(code: str, message: str = "injected by a test", *, status: int = 400,
                       protocol: str = "ec2") -> Any:
    """An ``AWSResponse`` carrying an AWS error, as the service would send it.

    ``protocol="ec2"`` renders EC2's ``<Response><Errors>`` body; ``"query"`` the
    ``<ErrorResponse>`` body of query services such as ELBv2.
    """
    from xml.sax.saxutils import escape

    from botocore.awsrequest import AWSResponse, HTTPHeaders

    if protocol == "ec2":
        body = ('<?xml version="1.0" encoding="UTF-8"?>'
                f"<Response><Errors><Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
                "</Error></Errors><RequestID>fault</RequestID></Response>")
    else:
        body = (f"<ErrorResponse><Error><Type>{'Sender' if status < 500 else 'Receiver'}</Type>"
                f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
                f"<RequestId>fault</RequestId></ErrorResponse>")
    headers = HTTPHeaders()
    headers["Content-Type"] = "text/xml"
    return AWSResponse("https://fault.invalid/", status, headers, _Body(body.encode()))


#: Decides the answer to one request: an ``AWSResponse`` to short-circuit it, or None to send it.
Answer = Callable[[int, Mapping[str, str]], Any]


class RequestFaults:
    """Answer some requests of one client operation with canned responses (botocore ``before-send``).

    ``answer(n, params)`` is called for the n-th request (1-based, retries included) with the
    request's form parameters; it returns an ``AWSResponse`` (see ``aws_error_response``) to
    stand in for the service, or None to let the request reach moto. ``calls`` keeps every
    request's parameters. Use as a context manager to unregister the hook at the end.
    """

    def __init__(self, client: Any, operation: str, answer: Answer) -> None:
        self.client = client
        self.operation = operation
        self.answer = answer
        self.calls: list[dict[str, str]] = []
        service = client.meta.service_model.service_id.hyphenize()
        self._event = f"before-send.{service}.{operation}"
        self._id = f"autoscaler-faults-{id(self)}"
        client.meta.events.register(self._event, self._before_send, unique_id=self._id)

    def _before_send(self, request: Any, **_: Any) -> Any:
        from urllib.parse import parse_qsl

        body = request.body
        text = body.decode() if isinstance(body, bytes) else str(body or "")
        params = dict(parse_qsl(text))
        self.calls.append(params)
        return self.answer(len(self.calls), params)

    def remove(self) -> None:
        """Stop answering: later requests reach moto."""
        self.client.meta.events.unregister(self._event, unique_id=self._id)

    def __enter__(self) -> RequestFaults:
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()


@pytest.fixture
def ec2_sandbox(moto: MotoServer) -> Ec2Sandbox:
    """A fresh two-zone EC2 sandbox (VPC, subnets, security group, instance profile) on moto."""
    return make_ec2_sandbox(moto)


def make_target_group(sandbox: Ec2Sandbox, name: str = "asr-nodes", *, target_type: str = "instance",
                      port: int = 7860) -> str:
    """Create an HTTP target group in the sandbox's VPC (health check ``/healthz``); return its ARN."""
    elb = sandbox.client("elbv2")
    group = elb.create_target_group(Name=name, Protocol="HTTP", Port=port, VpcId=sandbox.vpc_id,
                                    TargetType=target_type, HealthCheckPath="/healthz")
    return str(group["TargetGroups"][0]["TargetGroupArn"])


def run_plain_instances(sandbox: Ec2Sandbox, count: int) -> list[tuple[str, str]]:
    """Start ``count`` untagged instances of the base AMI in the first subnet; return ``(id, IP)`` pairs."""
    reply = sandbox.client("ec2").run_instances(ImageId=sandbox.base_image, InstanceType="t3.micro",
                                                MinCount=count, MaxCount=count, SubnetId=sandbox.subnets[0])
    return [(i["InstanceId"], i["PrivateIpAddress"]) for i in reply["Instances"]]


#: The transient answers ``SeededEc2Faults`` picks from: EC2's two throttling spellings and its 5xx.
TRANSIENT_FAULTS: tuple[tuple[str, int], ...] = (
    ("RequestLimitExceeded", 503),
    ("Throttling", 400),
    ("InternalError", 500),
    ("Unavailable", 503),
)

#: Operations whose request may be carried out by the service before its reply is lost.
_MUTATING = frozenset({"RunInstances", "TerminateInstances", "StopInstances", "StartInstances"})


@dataclass
class FaultTally:
    """What ``SeededEc2Faults`` did to one client's requests, by operation."""

    requests: dict[str, int]
    faults: dict[str, int]
    lost_replies: dict[str, int]
    replayed: int = 0

    def total(self, table: Mapping[str, int]) -> int:
        """The sum of one of the tables."""
        return sum(table.values())


class SeededEc2Faults:
    """Fail a seeded fraction of every EC2 request of one client, and honour ``ClientToken`` as EC2 does.

    Registered on botocore's ``before-send.ec2`` event, so every operation of ``client`` (retries
    included) is seen. Each request is, with probability ``rate`` (drawn from ``random.Random(seed)``):

    - answered with a throttling or 5xx error from ``TRANSIENT_FAULTS`` before it reaches moto, or,
      for ``RunInstances``/``TerminateInstances``/``StopInstances``/``StartInstances`` and with
      probability ``lost_reply_share`` of the faults, carried out by moto and its reply replaced by
      ``InternalError`` (HTTP 500): the reply EC2 sent got lost on the way back.

    Everything else is forwarded to moto unchanged. moto ignores ``ClientToken`` (5.x), EC2 does
    not: a ``RunInstances`` whose token was already served gets the first reservation back here,
    so a lost reply followed by the SDK's retry behaves as on EC2. A provider that changed the
    token between retries would launch twice, which the test then counts.
    """

    def __init__(self, client: Any, *, rate: float, seed: int, lost_reply_share: float = 0.25) -> None:
        self.client = client
        self.rate = rate
        self.lost_reply_share = lost_reply_share
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._served_tokens: dict[str, tuple[int, bytes]] = {}
        self.tally = FaultTally(requests={}, faults={}, lost_replies={})
        self.enabled = True
        self._id = f"autoscaler-seeded-faults-{id(self)}"
        client.meta.events.register("before-send.ec2", self._before_send, unique_id=self._id)

    def _before_send(self, request: Any, **_: Any) -> Any:
        from urllib.parse import parse_qsl

        body = request.body
        text = body.decode() if isinstance(body, bytes) else str(body or "")
        params = dict(parse_qsl(text))
        operation = params.get("Action", "?")
        with self._lock:
            self.tally.requests[operation] = self.tally.requests.get(operation, 0) + 1
            fault = self.enabled and self._random.random() < self.rate
            lose = fault and operation in _MUTATING and self._random.random() < self.lost_reply_share
            code, status = TRANSIENT_FAULTS[self._random.randrange(len(TRANSIENT_FAULTS))]
            token = params.get("ClientToken") if operation == "RunInstances" else None
            if token is not None and token in self._served_tokens:
                # EC2's idempotency: the same token gets the first reservation back, nothing new.
                self.tally.replayed += 1
                replay_status, replay_body = self._served_tokens[token]
                if not fault or lose:
                    return _xml_response(replay_status, replay_body)
            if fault and not lose:
                self.tally.faults[operation] = self.tally.faults.get(operation, 0) + 1
                return aws_error_response(code, f"injected {code}", status=status)
        reply = httpx.post(request.url, content=body or b"", timeout=30.0,
                           headers={k: v for k, v in request.headers.items()
                                    if k.lower() not in ("content-length", "host")})
        with self._lock:
            if token is not None and reply.status_code == 200:
                self._served_tokens.setdefault(token, (reply.status_code, reply.content))
            if lose:
                self.tally.lost_replies[operation] = self.tally.lost_replies.get(operation, 0) + 1
                return aws_error_response("InternalError", "injected: reply lost after the request ran",
                                          status=500)
        return _xml_response(reply.status_code, reply.content)

    def remove(self) -> None:
        """Stop interfering: later requests go straight to moto."""
        self.client.meta.events.unregister("before-send.ec2", unique_id=self._id)

    def __enter__(self) -> SeededEc2Faults:
        return self

    def __exit__(self, *_: object) -> None:
        self.remove()


def _xml_response(status: int, body: bytes) -> Any:
    from botocore.awsrequest import AWSResponse, HTTPHeaders

    headers = HTTPHeaders()
    headers["Content-Type"] = "text/xml"
    return AWSResponse("https://moto.invalid/", status, headers, _Body(body))
