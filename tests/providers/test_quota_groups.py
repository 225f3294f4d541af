"""Instance type → quota group for EC2 (On-Demand vCPU classes) and ECS (instance families)."""

from __future__ import annotations

import pytest

from autoscaler.providers.quota_groups import (
    ACCOUNT,
    alibaba_family,
    alibaba_quota_groups,
    alibaba_refused_group,
    aws_instance_class,
    aws_quota_groups,
    aws_refused_group,
)


@pytest.mark.parametrize(("instance_type", "quota_class"), [
    ("g5.xlarge", "G and VT"), ("g4dn.12xlarge", "G and VT"), ("g6e.48xlarge", "G and VT"),
    ("gr6.4xlarge", "G and VT"), ("vt1.3xlarge", "G and VT"), ("g5g.2xlarge", "G and VT"),
    ("p4d.24xlarge", "P"), ("p5.48xlarge", "P"), ("p5en.48xlarge", "P"), ("p3dn.24xlarge", "P"),
    ("inf2.xlarge", "Inf"), ("inf1.6xlarge", "Inf"),
    ("trn1.32xlarge", "Trn"), ("trn1n.32xlarge", "Trn"), ("trn2.48xlarge", "Trn"),
    ("dl1.24xlarge", "DL"), ("dl2q.24xlarge", "DL"),
    ("f1.2xlarge", "F"), ("f2.12xlarge", "F"),
    ("x2idn.16xlarge", "X"), ("x1e.xlarge", "X"), ("x8g.large", "X"),
    ("u-6tb1.metal", "High Memory"), ("u7i-12tb.224xlarge", "High Memory"),
    ("hpc7g.16xlarge", "HPC"), ("hpc6a.48xlarge", "HPC"),
    ("m7i.large", "Standard"), ("c6gn.xlarge", "Standard"), ("r6i.large", "Standard"),
    ("t3.micro", "Standard"), ("z1d.large", "Standard"), ("h1.2xlarge", "Standard"),
    ("i4i.large", "Standard"), ("im4gn.large", "Standard"), ("d3.xlarge", "Standard"),
    ("a1.large", "Standard"), ("mac2.metal", "Mac"),
])
def test_aws_types_map_to_their_on_demand_vcpu_class(instance_type: str, quota_class: str) -> None:
    """Each real EC2 type falls in the On-Demand vCPU quota class AWS documents for its family
    (prefixes that share a letter, inf/i, dl/d, trn/t, hpc/h, are told apart)."""
    assert aws_instance_class(instance_type) == quota_class


def test_an_unknown_aws_family_is_a_class_of_its_own() -> None:
    """A family outside the table does not fall into a known class (a refusal for it pauses nothing else)."""
    assert aws_instance_class("q9.large") == "family q9"


def test_aws_refusals_apply_to_the_class_the_type_or_the_account() -> None:
    """VcpuLimitExceeded names the class, InstanceLimitExceeded the type, a Spot count the account;
    the groups of a type are type, class, account."""
    assert aws_quota_groups("g5.xlarge") == ("type g5.xlarge", "On-Demand G and VT vCPUs", ACCOUNT)
    assert aws_refused_group("g5.xlarge", "VcpuLimitExceeded") == "On-Demand G and VT vCPUs"
    assert aws_refused_group("g5.xlarge", "VcpuLimitExceeded") not in aws_quota_groups("p4d.24xlarge")
    assert aws_refused_group("g5.xlarge", "InstanceLimitExceeded") == "type g5.xlarge"
    assert aws_refused_group("g5.xlarge", "InstanceLimitExceeded") not in aws_quota_groups("g4dn.xlarge")
    assert aws_refused_group("g5.xlarge", "MaxSpotInstanceCountExceeded") == ACCOUNT


@pytest.mark.parametrize(("instance_type", "family"), [
    ("ecs.gn7i-c8g1.2xlarge", "ecs.gn7i"), ("ecs.gn7i-c16g1.4xlarge", "ecs.gn7i"),
    ("ecs.gn6i-c4g1.xlarge", "ecs.gn6i"), ("ecs.gn6v-c8g1.2xlarge", "ecs.gn6v"),
    ("ecs.gn7e-c16g1.4xlarge", "ecs.gn7e"), ("ecs.ebmgn7e.32xlarge", "ecs.ebmgn7e"),
    ("ecs.g7.large", "ecs.g7"), ("ecs.c7.xlarge", "ecs.c7"), ("ecs.sgn7i-vws-m2.xlarge", "ecs.sgn7i"),
])
def test_alibaba_types_map_to_their_family(instance_type: str, family: str) -> None:
    """The ECS family is the name up to the size (and the GPU-slice suffix after '-')."""
    assert alibaba_family(instance_type) == family


def test_alibaba_quota_refusals_apply_to_the_family_account_errors_to_all() -> None:
    """QuotaExceed.* pauses the family; balance and arrears errors name the whole account."""
    assert alibaba_quota_groups("ecs.gn7i-c8g1.2xlarge") == ("family ecs.gn7i", ACCOUNT)
    assert alibaba_refused_group("ecs.gn7i-c8g1.2xlarge", "QuotaExceed.ElasticQuota") == "family ecs.gn7i"
    assert alibaba_refused_group("ecs.gn7i-c8g1.2xlarge", "QuotaExceed.ElasticQuota") \
        not in alibaba_quota_groups("ecs.gn6i-c4g1.xlarge")
    for code in ("InvalidAccountStatus.NotEnoughBalance", "Account.Arrearage", "OperationDenied.QuotaExceed"):
        assert alibaba_refused_group("ecs.gn7i-c8g1.2xlarge", code) == ACCOUNT
