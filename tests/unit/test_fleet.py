"""The shard planner, device names and launch placements (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.fleet import (
    DEFAULT_INSTANCE_TYPES,
    DEVICE_NAMES,
    MAX_HOSTS_PER_ARCHIVE,
    FleetConfigError,
    architecture,
    check_instance_types,
    devices,
    placements,
    plan_shards,
)

NAMES = st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), max_size=300,
                 unique=True)


@given(NAMES, st.integers(1, MAX_HOSTS_PER_ARCHIVE))
def test_every_host_in_exactly_one_shard_of_at_most_the_limit(hosts: list[str],
                                                              per: int) -> None:
    shards = plan_shards(hosts, per)
    members = [h for group in shards.values() for h in group]
    assert sorted(members) == sorted(hosts)
    assert all(1 <= len(group) <= per for group in shards.values())
    sizes = [len(group) for group in shards.values()]
    assert not sizes or max(sizes) - min(sizes) <= 1
    assert len(shards) == -(-len(hosts) // per)  # as few archives as the limit allows


def test_45_hosts_in_archives_of_20_are_three_of_15() -> None:
    shards = plan_shards([f"h{i:02d}" for i in range(45)], 20)
    assert list(shards) == ["s01", "s02", "s03"]
    assert [len(g) for g in shards.values()] == [15, 15, 15]


def test_shard_ids_sort_as_numbers_past_99() -> None:
    shards = plan_shards([f"h{i:04d}" for i in range(1000)], 1)
    assert list(shards) == sorted(shards) and list(shards)[-1] == "s1000"


def test_the_limit_is_the_device_names_and_nitros_attachments() -> None:
    assert MAX_HOSTS_PER_ARCHIVE == 21 == len(DEVICE_NAMES)
    with pytest.raises(FleetConfigError, match="1 to 21"):
        plan_shards(["a"], 22)
    with pytest.raises(FleetConfigError):
        plan_shards(["a"], 0)


def test_devices_follow_host_names() -> None:
    assert devices({"o", "c", "h"}) == {"c": "/dev/sdf", "h": "/dev/sdg", "o": "/dev/sdh"}


def test_graviton_types_are_arm64() -> None:
    assert architecture("t4g.small") == "arm64"
    assert architecture("m7gd.large") == "arm64"
    assert architecture("t3a.small") == "x86_64"
    assert architecture("m7i-flex.large") == "x86_64"


def test_xen_types_are_refused_with_what_to_use() -> None:
    with pytest.raises(FleetConfigError, match="Nitro") as refused:
        check_instance_types(["t3.small", "t2.small"])
    assert "t4g.small" in str(refused.value)
    with pytest.raises(FleetConfigError):
        check_instance_types(["not a type"])


def test_graviton_is_the_default_and_first() -> None:
    assert DEFAULT_INSTANCE_TYPES[0] == "t4g.small"


def test_placements_try_every_zone_before_the_next_type_with_the_matching_image() -> None:
    tried = placements(["t4g.small", "t3.small"], ["subnet-a", "subnet-b"],
                       {"arm64": "ami-arm", "x86_64": "ami-x86"})
    assert [(p.instance_type, p.subnet_id, p.image_id) for p in tried] == [
        ("t4g.small", "subnet-a", "ami-arm"), ("t4g.small", "subnet-b", "ami-arm"),
        ("t3.small", "subnet-a", "ami-x86"), ("t3.small", "subnet-b", "ami-x86")]
    assert [p.subnet_id for p in placements(["t3.small"], [])] == [None]
