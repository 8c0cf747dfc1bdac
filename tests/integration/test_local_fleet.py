"""The local stack's archive fleet (local/fleet.py) against a real moto server and real sshd:
instances launched with RunInstances as the control plane launches them (boto3 called here),
their volumes made from snapshots as directories, one sshd per shard on its own loopback
address, snapshots as point-in-time copies, stop and terminate as on EC2.

Runs as root (Unix accounts, sshd), like the e2e tests. No certificate or key is printed.
"""

from __future__ import annotations

import base64
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from chalicelib.boot_signal import check_signal, parse_signal, parse_signal_body
from chalicelib.instance.userdata import render_user_data
from chalicelib.sshcert import CertificateSpec, ca_public_key_line, sign_user_certificate
from local.accounts import live_processes
from local.aws import VPC_CIDR, Deployment, MotoServer, ReservedPort, aws_client, provision
from local.fleet import Fleet

from .test_boot_signal import Api, api

__all__ = ["api"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes Unix accounts, runs sshd")

RRSYNC = shutil.which("rrsync") or "/usr/bin/rrsync"
INSTANCE_ROOT = Path("/var/lib/offsite-local")  # the stack's: parents the accounts can reach


@dataclass
class Rig:
    ec2: Any
    deployment: Deployment
    fleet: Fleet
    root: Path
    port: int
    delivered: list[tuple[str, dict[str, Any]]]

    def step(self) -> None:
        self.fleet.step(lambda function, event: self.delivered.append((function, event)))

    def states(self, instance_id: str) -> list[str]:
        return [event["detail"]["state"] for function, event in self.delivered
                if function == "instance_state" and event["detail"]["instance-id"] == instance_id]

    def completed_snapshots(self) -> list[str]:
        return [event["detail"]["snapshot_id"].rsplit("/", 1)[1]
                for function, event in self.delivered if function == "snapshot_state"]

    @property
    def mount_root(self) -> Path:
        return self.fleet.settings.mount_root

    @property
    def restore_root(self) -> Path:
        return self.fleet.settings.restore_root


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    reserved = ReservedPort()
    server = MotoServer(reserved.port)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        reserved.close()


@pytest.fixture
def rig(moto: MotoServer) -> Iterator[Rig]:
    moto.reset()
    deployment = provision(moto.endpoint)
    INSTANCE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="fleet-test-", dir=INSTANCE_ROOT))
    root.chmod(0o755)
    ssh_port = ReservedPort()
    ec2 = aws_client("ec2", moto.endpoint)
    fleet = Fleet.create(root, ec2, ssh_port.port, deployment.keys, boot_seconds=0,
                         log=lambda line: None)
    try:
        yield Rig(ec2, deployment, fleet, root, ssh_port.port, [])
    finally:
        fleet.close()
        ssh_port.close()
        shutil.rmtree(root, ignore_errors=True)


# what the control plane does, in the shapes of the common brief ------------------------------
def user_data(hosts: dict[str, str], restores: dict[str, str], prefix: str,
              api_url: str = "") -> str:
    """The user-data the control plane renders (chalicelib.instance.userdata)."""
    ca = ca_public_key_line(SigningKey.generate())
    return render_user_data(sorted(hosts.items()), ca, "/offsite/local/host", "us-east-1",
                            restores=sorted(restores.items()), account_prefix=prefix,
                            api_url=api_url)


def launch(rig: Rig, window: str, shard: str, hosts: dict[str, str | None],
           subnet: int = 0, restore: bool = False, api_url: str = "",
           unmapped: dict[str, str] | None = None) -> dict[str, Any]:
    """RunInstances for one shard: `hosts` maps each host to the snapshot its volume starts
    from (None: blank), on /dev/sdf, /dev/sdg, ... in host-name order; `unmapped` (host ->
    device) are in the boot config with no volume in the mapping."""
    devices = {host: f"/dev/sd{'fghijklmnopqrstuvwxyz'[i]}" for i, host in enumerate(sorted(hosts))}
    mappings = []
    for host, device in devices.items():
        ebs: dict[str, Any] = {"VolumeType": "gp3", "Encrypted": True,
                               "DeleteOnTermination": False, "VolumeSize": 1}
        if hosts[host] is not None:
            ebs["SnapshotId"] = hosts[host]
        mappings.append({"DeviceName": device, "Ebs": ebs})
    tags = [{"Key": "offsite:window", "Value": window}, {"Key": "offsite:shard", "Value": shard}]
    prefix = rig.fleet.accounts.prefix
    return dict(rig.ec2.run_instances(
        LaunchTemplate={"LaunchTemplateId": rig.deployment.launch_template_id},
        ImageId=rig.deployment.image_ids["arm64"], InstanceType="t4g.small",
        SubnetId=rig.deployment.subnet_ids[subnet], MinCount=1, MaxCount=1,
        UserData=user_data({} if restore else {**devices, **(unmapped or {})},
                           devices if restore else {}, prefix, api_url),
        BlockDeviceMappings=mappings,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [
                *tags, {"Key": "offsite:purpose", "Value": "restore" if restore else "backup"},
                {"Key": "Name", "Value": f"offsite {window} {shard}"}]},
            {"ResourceType": "volume", "Tags": tags}],
    )["Instances"][0])


def volume_of(rig: Rig, instance_id: str, device: str) -> str:
    instance = rig.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0][
        "Instances"][0]
    return next(m["Ebs"]["VolumeId"] for m in instance["BlockDeviceMappings"]
                if m["DeviceName"] == device)


def seed_snapshot(rig: Rig, content: bytes) -> str:
    """A previous window's snapshot whose volume held seed.bin."""
    volume_id = rig.ec2.create_volume(Size=1, AvailabilityZone="us-east-1a")["VolumeId"]
    rig.step()
    (rig.fleet.ebs.volume(volume_id) / "seed.bin").write_bytes(content)
    snapshot_id = rig.ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    rig.ec2.delete_volume(VolumeId=volume_id)  # at once: the copy must be made first
    rig.step()
    assert not rig.fleet.ebs.volume(volume_id).exists()
    return str(snapshot_id)


# a host's side: a key, a certificate from the stack's CA, ssh and rsync ------------------------
@dataclass(frozen=True)
class Client:
    key: Path
    known_hosts: Path
    port: int

    def certificate(self, rig: Rig, account: str, force_command: str) -> Path:
        ca = SigningKey(base64.b64decode(rig.deployment.keys.ca_seed_b64))
        now = datetime.now(UTC)
        spec = CertificateSpec(
            public_key_line=self.key.with_suffix(".pub").read_text().strip(),
            principal=account, key_id=f"test {account}", serial=1, nonce=os.urandom(32),
            valid_after=now - timedelta(minutes=5), valid_before=now + timedelta(hours=1),
            force_command=force_command)
        path = self.key.with_name(f"{account}-cert.pub")
        path.write_text(sign_user_certificate(spec, ca) + "\n")
        return path

    def ssh(self, cert: Path) -> list[str]:
        return ["ssh", "-F", "none", "-i", str(self.key), "-o", f"CertificateFile={cert}",
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=none",
                "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5", "-p", str(self.port)]

    def rsync(self, cert: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rsync", "-e", shlex.join(self.ssh(cert)), *args],
                              capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def client(rig: Rig, tmp_path: Path) -> Client:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                   timeout=30)
    known_hosts = tmp_path / "known_hosts"
    addresses = ",".join(f"[127.77.{n}.{i}]:{rig.port}" for n in (1, 2) for i in range(4, 12))
    known_hosts.write_text(f"{addresses} {rig.deployment.keys.host_public_line}\n")
    return Client(key, known_hosts, rig.port)


def listening(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex((address, port)) == 0


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    limit = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < limit, "timed out"
        time.sleep(0.05)


# the tests -----------------------------------------------------------------------------------
def test_provision_gives_loopback_subnets_in_two_zones_and_an_ami_per_architecture(
        rig: Rig) -> None:
    subnets = rig.ec2.describe_subnets(SubnetIds=list(rig.deployment.subnet_ids))["Subnets"]
    assert {s["AvailabilityZone"] for s in subnets} == {"us-east-1a", "us-east-1b"}
    assert all(ip_network(s["CidrBlock"]).subnet_of(ip_network("127.0.0.0/8")) for s in subnets)
    environment = rig.deployment.app_environment()
    assert environment["SUBNET_IDS"].split(",") == list(rig.deployment.subnet_ids)
    assert environment["SSH_ADDRESS"] == "private"
    assert environment["LAUNCH_TEMPLATE"] == rig.deployment.launch_template_id
    assert {environment["IMAGE_ID_X86_64"], environment["IMAGE_ID_ARM64"]} == set(
        i["ImageId"] for i in rig.ec2.describe_images(Owners=["self"])["Images"])
    instance = launch(rig, "w0", "s01", {"a": None}, subnet=1)
    assert ip_address(instance["PrivateIpAddress"]) in ip_network(VPC_CIDR)
    assert ip_address(instance["PrivateIpAddress"]) in ip_network(subnets[1]["CidrBlock"])


def test_two_shards_serve_their_hosts_volumes_then_snapshot_stop_and_terminate(
        rig: Rig, client: Client) -> None:
    seed = seed_snapshot(rig, b"from the last window")
    first = launch(rig, "w1", "s01", {"a": seed, "b": None})
    second = launch(rig, "w1", "s02", {"c": None, "d": None})
    rig.step()

    # each shard boots: its hosts' volumes at MOUNT_ROOT/<host>, its own sshd
    assert rig.states(first["InstanceId"]) == ["running"]
    assert rig.states(second["InstanceId"]) == ["running"]
    assert (rig.mount_root / "a" / "seed.bin").read_bytes() == b"from the last window"
    assert list((rig.mount_root / "b").iterdir()) == []
    accounts = rig.fleet.accounts
    assert (rig.mount_root / "a").resolve().stat().st_uid == _uid(accounts.account("a"))
    addresses = {first["PrivateIpAddress"], second["PrivateIpAddress"]}
    assert len(addresses) == 2
    assert all(listening(address, rig.port) for address in addresses)

    # a host writes through its certificate's rrsync, on its own shard only
    tree = client.key.parent / "tree"
    tree.mkdir()
    (tree / "new.bin").write_bytes(b"written in this window")
    cert_a = client.certificate(rig, accounts.account("a"),
                                f"{RRSYNC} -wo {rig.mount_root / 'a'}")
    sent = client.rsync(cert_a, "-a", f"{tree}/", f"{accounts.account('a')}@"
                        f"{first['PrivateIpAddress']}:")
    assert sent.returncode == 0, sent.stderr
    volume_a = volume_of(rig, first["InstanceId"], "/dev/sdf")
    assert (rig.fleet.ebs.volume(volume_a) / "new.bin").read_bytes() == b"written in this window"
    cert_c = client.certificate(rig, accounts.account("c"),
                                f"{RRSYNC} -wo {rig.mount_root / 'c'}")
    elsewhere = client.rsync(cert_c, "-a", f"{tree}/", f"{accounts.account('c')}@"
                             f"{first['PrivateIpAddress']}:")
    assert elsewhere.returncode != 0  # c is not on the first shard
    assert not (rig.mount_root / "c" / "new.bin").exists()

    # stopping the first shard ends its session and its sshd; the second one keeps serving
    session = subprocess.Popen(
        [*client.ssh(cert_a), f"{accounts.account('a')}@{first['PrivateIpAddress']}",
         "rsync --server -logDtpre.iLsfxCIvu . ."],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: "rsync" in _commands(live_processes(_uid(accounts.account("a")))))
    rig.ec2.stop_instances(InstanceIds=[first["InstanceId"]])
    rig.step()
    assert rig.states(first["InstanceId"]) == ["running", "stopped"]
    assert session.wait(timeout=30) != 0
    assert live_processes(_uid(accounts.account("a"))) == []
    assert not listening(first["PrivateIpAddress"], rig.port)
    assert listening(second["PrivateIpAddress"], rig.port)
    assert not (rig.mount_root / "a").exists()  # unmounted; the volume stays

    # a snapshot holds what the volume held when it was requested
    snapshot = rig.ec2.create_snapshot(VolumeId=volume_a)["SnapshotId"]
    rig.step()
    assert snapshot in rig.completed_snapshots()
    copy = rig.fleet.ebs.snapshot(snapshot)
    assert (copy / "new.bin").read_bytes() == b"written in this window"
    assert (copy / "seed.bin").read_bytes() == b"from the last window"

    # terminate, then DeleteVolume: the instance's files, then its volumes' directories go
    volumes = [volume_a, volume_of(rig, first["InstanceId"], "/dev/sdg")]
    rig.ec2.terminate_instances(InstanceIds=[first["InstanceId"]])
    rig.step()
    assert rig.states(first["InstanceId"]) == ["running", "stopped", "terminated"]
    assert not (rig.fleet.settings.root / first["InstanceId"]).exists()
    assert all(rig.fleet.ebs.volume(v).is_dir() for v in volumes)  # DeleteOnTermination false
    for volume_id in volumes:
        rig.ec2.delete_volume(VolumeId=volume_id)
    rig.step()
    assert not any(rig.fleet.ebs.volume(v).exists() for v in volumes)
    assert copy.is_dir()
    assert listening(second["PrivateIpAddress"], rig.port)
    rig.step()
    assert rig.states(first["InstanceId"]) == ["running", "stopped", "terminated"]  # once each


def test_a_restore_archive_serves_the_snapshot_read_only(rig: Rig, client: Client) -> None:
    seed = seed_snapshot(rig, b"what to restore")
    restore = launch(rig, "r1", "s01", {"a": seed}, restore=True)
    rig.step()
    assert rig.states(restore["InstanceId"]) == ["running"]
    assert not (rig.mount_root / "a").exists()
    account = rig.fleet.accounts.account("a")
    fetched = client.key.parent / "fetched"
    cert = client.certificate(rig, account, f"{RRSYNC} -ro {rig.restore_root / 'a'}")
    got = client.rsync(cert, "-a", f"{account}@{restore['PrivateIpAddress']}:", f"{fetched}/")
    assert got.returncode == 0, got.stderr
    assert (fetched / "seed.bin").read_bytes() == b"what to restore"
    (client.key.parent / "more.bin").write_bytes(b"no")
    written = client.rsync(cert, str(client.key.parent / "more.bin"),
                           f"{account}@{restore['PrivateIpAddress']}:")
    assert written.returncode != 0
    volume = volume_of(rig, restore["InstanceId"], "/dev/sdf")
    assert not (rig.fleet.ebs.volume(volume) / "more.bin").exists()


def _uid(account: str) -> int:
    return pwd.getpwnam(account).pw_uid


def _commands(pids: list[int]) -> set[str]:
    """The programs these processes run (the session's rsync once it is established)."""
    names = set()
    for pid in pids:
        try:
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue
    return names


def test_a_booted_archive_says_ready_as_boot_sh_does_and_one_short_of_a_volume_says_why(
        rig: Rig, api: tuple[Api, str]) -> None:
    """The fleet runs boot.sh's signal step: the archive's host key signs, curl posts, and the
    control plane's check accepts it."""
    recorder, url = api
    ready = launch(rig, "w1", "s01", {"a": None}, api_url=url)
    short = launch(rig, "w1", "s02", {"c": None}, api_url=url, unmapped={"d": "/dev/sdz"})
    rig.step()
    said = {}
    for path, body in recorder.posts:
        message, armored = parse_signal_body(body)
        signal = parse_signal(message)
        assert path == f"/v1/archives/{signal.instance_id}/{signal.status}"
        check_signal(message, armored, rig.deployment.keys.host_public_line,
                     signal.instance_id, signal.status, signal.time)
        said[signal.instance_id] = (signal.status, signal.reason)
    assert said[ready["InstanceId"]][0] == "ready"
    assert said[short["InstanceId"]] == ("failed", "d: /dev/sdz is not attached")
    assert len(recorder.posts) == 2
