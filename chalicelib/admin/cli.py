"""`offsite-admin`: argument parsing and the exit codes; the commands are in commands.py.

Exit codes: 0 done; 1 refused (by the API, AWS, or a check of this tool); 2 bad usage;
3 the API or AWS could not be reached; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from chalicelib.admin import commands
from chalicelib.admin.api import ApiError, ApiUnreachableError

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
    init.add_argument("--image-id", help="the archive instance's AMI (first deploy)")
    init.add_argument("--vpc-id", help="the VPC (first deploy)")
    init.add_argument("--subnet-id", help="a public subnet (first deploy)")
    init.add_argument("--ssh-cidr", action="append", default=[],
                      help="a CIDR hosts connect from (repeat; first deploy)")
    init.add_argument("--alert-email", help="subscribed to the window notifications")
    init.add_argument("--instance-type", help="the archive instance's usual type")

    host = command(sub, "host", "enrol, revoke and list hosts").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    add = command(host, "add", "enrol a host (or re-enrol it with a new key)")
    add.add_argument("name")
    key = add.add_mutually_exclusive_group(required=True)
    key.add_argument("--public-key", help="the host's 'ssh-ed25519 AAAA...' line")
    key.add_argument("--public-key-file", help="a file holding that line")
    add.add_argument("--size-gib", type=int, help="its volume's size (default 20)")
    add.add_argument("--volume-id", help="use this existing volume (vol-...)")
    command(host, "revoke", "revoke a host (its next request is refused)").add_argument("name")
    command(host, "list", "enrolled hosts")

    window = command(sub, "window", "open, close and follow backup windows").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    opening = command(window, "open", "open an ad-hoc window")
    opening.add_argument("--hours", type=float, help="its length (default: the stage's)")
    opening.add_argument("--host", action="append", dest="hosts",
                         help="expect only this host (repeat); default every enabled host")
    command(window, "close", "close a window now").add_argument("window_id")
    command(window, "status", "one window (default: the current one)").add_argument(
        "window_id", nargs="?")
    history = command(window, "history", "recent windows, newest first")
    history.add_argument("--limit", type=int, default=10)

    snapshots = command(sub, "snapshots", "a host's recovery points")
    snapshots.add_argument("--host", required=True)

    cost = command(sub, "cost", "a month's cost at recent usage, beside an instance kept up "
                   "for the whole window")
    cost.add_argument("--windows", type=int, default=7, help="recent windows to average")
    cost.add_argument("--instance-type", default="t3.small")
    cost.add_argument("--window-hours", type=float,
                      help="the kept-up comparison's window (default: the windows' own)")
    cost.add_argument("--volume-gib", type=float,
                      help="GiB per host volume (default: read from EC2, else 20)")
    cost.add_argument("--stored-gib", type=float,
                      help="what the volumes hold (default: estimated from the reports)")
    cost.add_argument("--retention-days", type=int, default=20)
    cost.add_argument("--prices", help="a price file (default $OFFSITE_PRICES or the shipped)")
    return parser


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
