"""Which quota a launch refusal used up: instance type → quota group, for EC2 and Alibaba ECS.

A quota refusal says nothing about types that count against another quota, so a pool that lists GPU
types of several quota classes must keep launching the others. These pure functions name the groups
an instance type counts against (narrowest first) and the one group a given refusal applies to;
``OfferBackoff`` pauses that group and the providers skip the types inside it.

**EC2.** On-Demand instances count against a vCPU quota per instance *class* (Service Quotas,
"Running On-Demand ... instances", https://docs.aws.amazon.com/ec2/latest/instancetypes/ec2-instance-quotas.html):

=====================  ==========================================================================
class                  instance families
=====================  ==========================================================================
Standard               A, C, D, H, I, M, R, T, Z (``m7i``, ``c6gn``, ``h1``, ``im4gn``, ``z1d`` ...)
F                      ``f1``, ``f2``
G and VT               ``g4dn``, ``g5``, ``g6e``, ``gr6``, ``vt1``
Inf                    ``inf1``, ``inf2``
P                      ``p3``, ``p4d``, ``p5``, ``p5en``
X                      ``x1``, ``x2idn``, ``x8g``
DL                     ``dl1``, ``dl2q``
Trn                    ``trn1``, ``trn1n``, ``trn2``
High Memory            ``u-6tb1.metal``, ``u7i-12tb.224xlarge`` (the ``u`` families)
HPC                    ``hpc6a``, ``hpc7g`` (a quota of their own, not Standard's H)
Mac                    ``mac1``, ``mac2`` (Dedicated Hosts, counted apart)
=====================  ==========================================================================

``VcpuLimitExceeded`` applies to the class of the refused type; the older ``InstanceLimitExceeded``
(a per-type instance count) to that type only; ``MaxSpotInstanceCountExceeded`` (the account's Spot
request count) and any other quota code to the whole account. A family outside the table (a new
letter) is its own class, so a refusal for it never pauses a known class.

**Alibaba ECS.** Quotas (``QuotaExceed.*``, e.g. ``QuotaExceed.ElasticQuota``, the vCPU quota of an
instance family in a region/zone) apply to the *family* of the refused type: ``ecs.gn7i`` for
``ecs.gn7i-c8g1.2xlarge``, ``ecs.g7`` for ``ecs.g7.large``. Account errors
(``InvalidAccountStatus.NotEnoughBalance``, ``Account.Arrearage``) and ``OperationDenied.QuotaExceed``
(an account-level limit) name something wider: the whole account.
"""

from __future__ import annotations

import re

#: The group every type belongs to: an account-wide refusal pauses it.
ACCOUNT = "account"

# Longest prefixes first: ``inf`` and ``im4gn`` both start with ``i``, ``dl`` and ``d2`` with ``d``.
_AWS_CLASSES: tuple[tuple[str, str], ...] = (
    ("u-", "High Memory"), ("u7", "High Memory"),
    ("hpc", "HPC"), ("inf", "Inf"), ("trn", "Trn"), ("dl", "DL"), ("vt", "G and VT"),
    ("mac", "Mac"), ("g", "G and VT"), ("p", "P"), ("f", "F"), ("x", "X"),
    ("a", "Standard"), ("c", "Standard"), ("d", "Standard"), ("h", "Standard"), ("i", "Standard"),
    ("m", "Standard"), ("r", "Standard"), ("t", "Standard"), ("z", "Standard"),
)
_AWS_FAMILY = re.compile(r"^[a-z][a-z0-9-]*")

#: EC2 quota codes whose limit is the instance type's own count.
AWS_TYPE_CODES = frozenset({"InstanceLimitExceeded"})
#: EC2 quota codes whose limit is the class's vCPU count.
AWS_CLASS_CODES = frozenset({"VcpuLimitExceeded"})
#: ECS refusals that apply to the whole account, whatever type asked.
ALIBABA_ACCOUNT_CODES = frozenset({
    "InvalidAccountStatus.NotEnoughBalance", "Account.Arrearage", "OperationDenied.QuotaExceed",
})


def aws_instance_class(instance_type: str) -> str:
    """The On-Demand quota class of an EC2 type: ``"P"`` for ``p4d.24xlarge``, ``"G and VT"`` for
    ``g5.xlarge``, ``"Standard"`` for ``m7i.large``; an unknown family names its own class."""
    family = instance_type.strip().lower().split(".", 1)[0]
    for prefix, name in _AWS_CLASSES:
        if family.startswith(prefix):
            return name
    match = _AWS_FAMILY.match(family)
    return f"family {match.group(0) if match else family}"


def aws_quota_groups(instance_type: str) -> tuple[str, ...]:
    """Every quota group an EC2 type counts against, narrowest first: the type, its class, the account."""
    return (f"type {instance_type}", f"On-Demand {aws_instance_class(instance_type)} vCPUs", ACCOUNT)


def aws_refused_group(instance_type: str, code: str) -> str:
    """The group a quota refusal ``code`` of ``instance_type`` applies to (see the module docstring)."""
    groups = aws_quota_groups(instance_type)
    if code in AWS_TYPE_CODES:
        return groups[0]
    if code in AWS_CLASS_CODES:
        return groups[1]
    return ACCOUNT


def alibaba_family(instance_type: str) -> str:
    """The ECS instance family of a type: ``ecs.gn7i`` for ``ecs.gn7i-c8g1.2xlarge``, ``ecs.g7`` for
    ``ecs.g7.large``; a name without the ``ecs.`` prefix is its own family."""
    name = instance_type.strip()
    if not name.startswith("ecs."):
        return name
    family = name[len("ecs."):].split(".", 1)[0].split("-", 1)[0]
    return f"ecs.{family}"


def alibaba_quota_groups(instance_type: str) -> tuple[str, ...]:
    """Every quota group an ECS type counts against, narrowest first: its family, the account."""
    return (f"family {alibaba_family(instance_type)}", ACCOUNT)


def alibaba_refused_group(instance_type: str, code: str) -> str:
    """The group an ECS quota refusal ``code`` of ``instance_type`` applies to."""
    if code in ALIBABA_ACCOUNT_CODES:
        return ACCOUNT
    return alibaba_quota_groups(instance_type)[0]
