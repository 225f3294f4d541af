"""A moto server on 127.0.0.1 for tests of the AWS adapters, with AMI and instance-type validation on.

The AWS adapters are tested against moto in *server mode*: boto3 talks HTTP to a
``moto.server.ThreadedMotoServer`` bound to loopback on a free port, exactly as it would talk to
EC2 or ELBv2, so requests go through botocore's real serializer, retry handler and event hooks.

Usage as a context manager::

    with running_moto_server() as moto:
        ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto.endpoint_url)
        ...
        moto.reset()            # forget every resource between tests

or through the pytest fixtures below, imported into a test module (``from
autoscaler.testing.moto_server import moto_server, moto  # noqa: F401``): ``moto_server`` starts one
server per test module; ``moto`` resets its state before each test.

While the server runs, the process environment carries dummy credentials
(``AWS_ACCESS_KEY_ID=testing`` ...), ``AWS_EC2_METADATA_DISABLED=true`` (so botocore never asks the
instance metadata address for credentials or a region) and moto's validation switches; everything
is restored when it stops. moto keeps its state in process-wide backends, so two servers in one
process share resources: run one at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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
def running_moto_server(*, validate: bool = True, env: Mapping[str, str] | None = None) -> Iterator[MotoServer]:
    """Run a moto server on 127.0.0.1 (a free port) for the ``with`` block, then stop it.

    ``validate`` turns on moto's AMI and instance-type validation. ``env`` adds to (or overrides)
    ``DUMMY_AWS_ENV`` for the block. The server's state is reset on exit, so resources do not
    leak into a later server in the same process.
    """
    environment = {**DUMMY_AWS_ENV, **(MOTO_VALIDATION_ENV if validate else {}), **(env or {})}
    with _patched_environment(environment):
        # Imported only now, so a first import of moto sees the validation switches.
        from moto.server import ThreadedMotoServer

        with _moto_validation_on() if validate else _nothing():
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
def _nothing() -> Iterator[None]:
    yield


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
