"""`offsite-admin`: argument parsing and the exit codes; the commands are in commands.py.

Exit codes: 0 done; 1 refused (by the API, AWS, or a check of this tool), and from `status`,
some host is stale; 2 bad usage; 3 the API or AWS could not be reached; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import date

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from chalicelib.admin import commands
from chalicelib.admin.api import ApiError, ApiUnreachableError
from chalicelib.admin.kms import KeyArnError, key_region_and_account

REFUSED, USAGE, UNREACHABLE = 1, 2, 3


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options every command takes, before or after its name."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("where")
    group.add_argument("--stage", default=default(os.environ.get("OFFSITE_STAGE", "dev")),
                       help="the deployment's stage (default $OFFSITE_STAGE or dev; the local "
                            "stack's is 'local')")
    group.add_argument("--api-url", default=default(os.environ.get("OFFSITE_API_URL")),
                       help="the admin API (default $OFFSITE_API_URL, else the stack's "
                            "EndpointURL output)")
    group.add_argument("--endpoint-url", default=default(os.environ.get("AWS_ENDPOINT_URL")),
                       help="AWS endpoint for SSM/DynamoDB/EC2/CloudFormation, e.g. the local "
                            "stack's moto server (default $AWS_ENDPOINT_URL)")
    group.add_argument("--region", default=default(None),
                       help="AWS region (default: the usual AWS configuration)")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print JSON for scripts instead of tables")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="offsite-admin", description="Offsite's admin tool: set up the deployment, "
        "enrol hosts, run windows, list snapshots, see the cost. Uses your AWS credentials.")
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                text: str) -> argparse.ArgumentParser:
        made = group.add_parser(name, help=text, description=text)
        _common(made, suppress=True)
        return made

    init = command(sub, "init", "CA and host keys into SSM, the table, the first deploy; "
                   "prints the plan first")
    init.add_argument("--yes", action="store_true", help="do not ask before doing it")
    init.add_argument("--no-deploy", action="store_true", help="keys (and table) only")
    init.add_argument("--artifact-bucket", help="S3 bucket for the bundle and the template")
    init.add_argument("--ssh-cidr", action="append", default=[],
                      help="a CIDR hosts connect from (repeat; first deploy)")
    init.add_argument("--vpc-id", help="the archives' VPC (default: the default VPC)")
    init.add_argument("--subnet-id", action="append", dest="subnet_ids", default=[],
                      help="a subnet of --vpc-id to launch archives in, one per Availability "
                      "Zone, tried in order (repeat)")
    init.add_argument("--ssh-address", choices=("public", "private"),
                      help="the archive address hosts are given (default public)")
    init.add_argument("--instance-type", action="append", dest="instance_types", default=[],
                      help="an archive instance type, tried in the order given (repeat; "
                      "default t4g.small, t3a.small, t3.small)")
    init.add_argument("--hosts-per-archive", type=int, help="hosts per archive (default 20)")
    init.add_argument("--kms-key", "--kms-key-arn", dest="kms_key", type=_key_arn,
                      help="a customer managed KMS key (its ARN) for the SSM SecureStrings and "
                      "the window volumes (default: the account's aws/ssm and EBS keys); "
                      "init prints the statements its key policy needs")
    init.add_argument("--alert-email", help="subscribed to the window notifications")
    init.add_argument("--dashboard", action=argparse.BooleanOptionalAction,
                      help="the CloudWatch dashboard offsite-<stage> ($3 a month beyond "
                      "CloudWatch's three free dashboards; `status` shows the same hosts; "
                      "default: made on the first deploy, kept as it is on an update)")

    host = command(sub, "host", "enrol, revoke and list hosts").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    add = command(host, "add", "enrol a host (or re-enrol it with a new key)")
    add.add_argument("name", help="the host's name, as its host.toml says (letters, digits, "
                     "dots, dashes)")
    key = add.add_mutually_exclusive_group(required=True)
    key.add_argument("--public-key", help="the host's 'ssh-ed25519 AAAA...' line")
    key.add_argument("--public-key-file", help="a file holding that line")
    add.add_argument("--size-gib", type=int,
                     help="the size of the volume each window makes for it (default 20; at "
                          "least its newest snapshot's)")
    add.add_argument("--start-grace-minutes", type=int, metavar="M",
                     help="this host's own START_GRACE_MINUTES: if it has not asked for a "
                          "session M minutes after its archive is ready, it no longer holds "
                          "the archive up (default: the stage's, 30; kept when re-enrolled)")
    add.add_argument("--volume-id", metavar="VOL_ID",
                     help="at its first enrolment only: adopt the data of this existing volume "
                          "(vol-...): it is snapshotted once, and that snapshot is the host's "
                          "first recovery point and its first window's volume (stop writing "
                          "to it first); the volume itself is left as it is")
    command(host, "revoke", "revoke a host (its next request is refused)").add_argument(
        "name", help="the host's name")
    command(host, "list", "enrolled hosts")

    window = command(sub, "window", "open, close and follow backup windows").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    opening = command(window, "open", "open an ad-hoc window")
    opening.add_argument("--hours", type=float, help="its length (default: the stage's)")
    opening.add_argument("--host", action="append", dest="hosts",
                         help="expect only this host (repeat); default every enabled host")
    command(window, "close", "close a window now").add_argument(
        "window_id", help="as `window history` lists it")
    command(window, "status", "one window (default: the current one)").add_argument(
        "window_id", nargs="?", help="as `window history` lists it (default: the current one)")
    history = command(window, "history", "recent windows, newest first")
    history.add_argument("--limit", type=int, default=10, help="how many (default 10)")

    command(sub, "status", "the fleet: each host's newest complete recovery point and its age, "
            "its last window, stale or not; exit status 1 when a host is stale")

    snapshots = command(sub, "snapshots", "a host's recovery points")
    snapshots.add_argument("--host", required=True, help="the host's name")

    restore = command(sub, "restore", "open a restore window for a host: its own archive, "
                      "made from one recovery point, which the host then fetches with "
                      "`offsite-host restore` (a host can also open one itself)")
    restore.add_argument("--host", required=True, help="the host's name")
    point = restore.add_mutually_exclusive_group(required=True)
    point.add_argument("--date", type=_day, metavar="YYYY-MM-DD",
                       help="the day's newest complete recovery point")
    point.add_argument("--snapshot", metavar="SNAP_ID", help="one recovery point by its id "
                       "(as `snapshots --host` lists them)")
    restore.add_argument("--allow-incomplete", action="store_true",
                         help="allow a point whose backup did not finish (off)")

    cost = command(sub, "cost", "a month's cost at recent usage (the per-window fleet), beside "
                   "the persistent design and the fleet kept up for the whole window")
    cost.add_argument("--windows", type=int, default=7,
                      help="recent windows to average (default 7)")
    cost.add_argument("--instance-type",
                      help="price every shard as this type (default: the type each recorded)")
    cost.add_argument("--window-hours", type=float,
                      help="the kept-up comparison's window (default: the windows' own)")
    cost.add_argument("--volume-gib", type=float, default=20.0,
                      help="GiB of each host's data volume (default 20)")
    cost.add_argument("--stored-gib", type=float,
                      help="what the volumes hold (default: estimated from the reports)")
    cost.add_argument("--retention-days", type=int, default=20,
                      help="days of snapshots kept (default 20)")
    cost.add_argument("--snapshot-settle-minutes", type=float, default=10.0,
                      help="stop to snapshots complete, for windows that did not record it "
                           "(default 10)")
    cost.add_argument("--prices", help="a price file (default $OFFSITE_PRICES or the shipped)")

    smoke = command(sub, "smoke", "prove the deployment end to end: a throwaway host (this "
                    "workstation) is enrolled, backed up by the real offsite-host, its snapshot "
                    "restored and compared byte for byte, then all it made is removed; run "
                    "after init and after each upgrade")
    smoke.add_argument("--window-hours", type=float, default=0.5,
                       help="the smoke window's length: the longest its archive can run "
                            "(default 0.5)")
    smoke.add_argument("--wait-minutes", type=float, default=20.0,
                       help="the longest each wait lasts: the archive, the snapshot, the "
                            "restore (default 20)")
    smoke.add_argument("--size-mib", type=float, default=1.0,
                       help="the generated data set's size (default 1 MiB)")
    smoke.add_argument("--host-command", help="the offsite-host to run (default: the one "
                       "installed beside offsite-admin, else on PATH)")
    smoke.add_argument("--work-dir", help="where to make its temporary directory (default: "
                       "the system's temporary directory)")
    smoke.add_argument("--prices", help="a price file (default $OFFSITE_PRICES or the shipped)")

    destroy = command(sub, "destroy", "remove a stage: its stack, table and keys; its "
                      "snapshots are kept unless --no-keep-snapshots")
    destroy.add_argument("--yes", action="store_true",
                         help="do not ask (with --no-keep-snapshots: not even the second time)")
    destroy.add_argument("--keep-snapshots", action=argparse.BooleanOptionalAction,
                         default=True, help="keep the stage's snapshots, the last good copies "
                         "(default); --no-keep-snapshots deletes them too, after asking again")
    return parser


def _day(text: str) -> str:
    try:
        date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None
    return text


def _key_arn(text: str) -> str:
    try:
        key_region_and_account(text)
    except KeyArnError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return commands.run(args)
    except commands.UsageError as exc:
        parser.error(str(exc))  # exits 2
    except ApiError as exc:
        _fail(f"the API refused ({exc.status}): {exc}")
        return REFUSED
    except ApiUnreachableError as exc:
        _fail(str(exc))
        return UNREACHABLE
    except NoRegionError:
        _fail("no AWS region is set: pass --region REGION (or set AWS_REGION, or region in "
              "~/.aws/config)")
        return USAGE
    except NoCredentialsError:
        _fail("no AWS credentials found (set AWS_PROFILE, or run aws configure / sso login)")
        return REFUSED
    except ClientError as exc:
        error = exc.response.get("Error", {})
        _fail(f"AWS refused {exc.operation_name}: {error.get('Code')}: {error.get('Message')}")
        return REFUSED
    except BotoCoreError as exc:
        _fail(f"AWS: {exc}")
        return UNREACHABLE
    except commands.EXPECTED as exc:
        _fail(str(exc))
        return REFUSED
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    return 0  # pragma: no cover (parser.error exits)


def _fail(message: str) -> None:
    print(f"offsite-admin: {message}", file=sys.stderr)
