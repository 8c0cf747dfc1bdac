"""The commands: each gathers what it needs (the admin API, AWS), and prints a table, or the
JSON with --json. Nothing printed is a secret: keys appear as parameter names and
fingerprints, never as values."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import NoCredentialsError

from chalicelib.admin import views
from chalicelib.admin.api import AdminApi, region_of
from chalicelib.admin.deploy import Deployer, DeployError, StackInputs, stack_outputs
from chalicelib.admin.destroy import DestroyError, apply_destroy, find_stage, plan_destroy
from chalicelib.admin.initialise import (
    InitError,
    Target,
    apply_init,
    existing_parameters,
    plan_init,
    render_plan,
    table_exists,
)
from chalicelib.admin.kms import key_policy_statements, region_mismatch
from chalicelib.admin.smoke import Smoke, SmokeSettings
from chalicelib.admin.smoke_cleanup import Cleanup
from chalicelib.admin.smoke_host import default_host_command
from chalicelib.admin.smoke_report import render, summary_data
from chalicelib.admin.usage import NoUsageError, observe
from chalicelib.cost import GIB, UnknownPriceError, load_prices
from chalicelib.cost_report import compare, designs

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class AdminError(Exception):
    """A refusal of this tool's own, printed as is."""


class UsageError(Exception):
    pass


EXPECTED = (AdminError, InitError, DeployError, DestroyError, NoUsageError, UnknownPriceError)


@dataclasses.dataclass
class Context:
    args: argparse.Namespace
    out: Callable[[str], None] = print

    @functools.cached_property
    def session(self) -> boto3.session.Session:
        return boto3.session.Session(region_name=self.args.region)

    def client(self, name: str) -> Any:
        return self.session.client(name, endpoint_url=self.args.endpoint_url)  # type: ignore[call-overload]

    def api(self) -> AdminApi:
        url = self.args.api_url or self._stack_api_url()
        region = self.session.region_name or "us-east-1"
        credentials = self.session.get_credentials()
        if credentials is None and urllib.parse.urlsplit(url).hostname not in LOOPBACK:
            raise NoCredentialsError()
        return AdminApi(url, credentials, region_of(url, region))

    def _stack_api_url(self) -> str:
        if self.args.endpoint_url:
            raise AdminError("against the local stack, give --api-url (the stack prints it)")
        name = f"offsite-{self.args.stage}"
        url = stack_outputs(self.client("cloudformation"), name).get("EndpointURL")
        if not url:
            raise AdminError(f"the stack {name} has no EndpointURL output; give --api-url")
        return str(url)

    def show(self, data: Any, text: str) -> int:
        self.out(json.dumps(data, indent=2, sort_keys=True) if self.args.json else text)
        return 0


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    ctx = Context(args, out)
    handler = HANDLERS[(args.command, getattr(args, "action", None))]
    return handler(ctx)


# init ------------------------------------------------------------------------------------------
def cmd_init(ctx: Context) -> int:
    args = ctx.args
    target = Target(args.stage, local=bool(args.endpoint_url), kms_key=args.kms_key)
    mismatch = args.kms_key and region_mismatch(args.kms_key, ctx.session.region_name)
    if mismatch and not target.local:
        raise UsageError(mismatch)
    ssm, dynamodb = ctx.client("ssm"), ctx.client("dynamodb")
    deployer = None if target.local or args.no_deploy else _deployer(ctx, target)
    steps = plan_init(target, existing_parameters(ssm, target.keys),
                      table_exists(dynamodb, target.table),
                      deployer.check() if deployer else None)
    where = (f"AWS at {args.endpoint_url} (the local stack)" if target.local
             else f"region {ctx.session.region_name or '(default)'}")
    print(render_plan(target, steps, where), file=sys.stderr)
    if target.kms_key:
        print(f"the key {target.kms_key} needs these statements in its key policy "
              "(README, Deploying):\n"
              + json.dumps(key_policy_statements(target.kms_key), indent=2), file=sys.stderr)
    if not any(s.does_something for s in steps):
        print("nothing to do: already initialised", file=sys.stderr)
        return ctx.show(_steps_data(steps), "initialised")
    if not args.yes and not _confirmed():
        raise AdminError("nothing done")
    apply_init(target, steps, ssm, dynamodb, deployer or (lambda: None),
               lambda line: print(line, file=sys.stderr))
    return ctx.show(_steps_data(steps), f"initialised stage {target.stage}")


def _deployer(ctx: Context, target: Target) -> Deployer:
    args = ctx.args
    if not args.artifact_bucket:
        raise UsageError("the deploy needs --artifact-bucket (an S3 bucket of yours for the "
                         "bundle and the template), or --no-deploy")
    inputs = StackInputs(vpc_id=args.vpc_id, subnet_ids=tuple(args.subnet_ids),
                         ssh_cidrs=tuple(args.ssh_cidr), alert_email=args.alert_email,
                         instance_types=tuple(args.instance_types),
                         ssh_address=args.ssh_address, kms_key_arn=args.kms_key,
                         hosts_per_archive=args.hosts_per_archive, dashboard=args.dashboard)
    return Deployer(ctx.client("cloudformation"), ctx.client("s3"), target.stage,
                    target.stack_name, args.artifact_bucket, inputs,
                    lambda line: print(line, file=sys.stderr))


def _confirmed(question: str = "Go ahead?") -> bool:
    if not sys.stdin.isatty():
        raise AdminError("not a terminal: add --yes to go ahead without being asked")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _steps_data(steps: list[Any]) -> dict[str, Any]:
    return {"steps": [dataclasses.asdict(s) for s in steps]}


# hosts -----------------------------------------------------------------------------------------
def public_key_from(args: argparse.Namespace) -> str:
    text: str | None = args.public_key
    if text is None:
        try:
            text = Path(args.public_key_file).read_text()
        except OSError as exc:
            raise AdminError(f"cannot read {args.public_key_file}: {exc.strerror}") from None
    if "PRIVATE KEY" in text:
        raise AdminError("that is a private key: give the host's public key line "
                         "(what `offsite-host keygen` printed), never its private key")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise AdminError(f"the public key must be one 'ssh-ed25519 AAAA...' line, not "
                         f"{_count(len(lines), 'line')}")
    kind = lines[0].split(maxsplit=1)[0]
    if kind != "ssh-ed25519" and (kind.startswith(("ssh-", "ecdsa-", "sk-"))):
        raise AdminError(f"only ssh-ed25519 keys are accepted, and this is an {kind} key: "
                         "give the line `offsite-host keygen` printed on the host")
    return lines[0]


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}" + ("" if number == 1 else "s")


def cmd_host_add(ctx: Context) -> int:
    args = ctx.args
    body: dict[str, Any] = {"public_key": public_key_from(args)}
    if args.size_gib is not None:
        body["size_gib"] = args.size_gib
    if args.start_grace_minutes is not None:
        body["start_grace_minutes"] = args.start_grace_minutes
    if args.volume_id:
        body["volume_id"] = args.volume_id
    host = ctx.api().call("PUT", f"/v1/hosts/{_segment(args.name)}", body)
    return ctx.show(host, views.host_line(host, new=None))


def cmd_host_revoke(ctx: Context) -> int:
    host = ctx.api().call("DELETE", f"/v1/hosts/{_segment(ctx.args.name)}")
    return ctx.show(host, f"revoked {host['name']}: its next request is refused; its "
                          "snapshots stay")


def cmd_host_list(ctx: Context) -> int:
    answer = ctx.api().call("GET", "/v1/hosts")
    return ctx.show(answer, views.hosts_table(answer.get("hosts", [])))


# windows ---------------------------------------------------------------------------------------
def cmd_window_open(ctx: Context) -> int:
    body: dict[str, Any] = {}
    if ctx.args.hours is not None:
        body["duration_hours"] = ctx.args.hours
    if ctx.args.hosts:
        body["hosts"] = ctx.args.hosts
    window = ctx.api().call("POST", "/v1/windows", body)
    archives = len(window.get("shards") or [])
    return ctx.show(window, f"opened {window['window_id']} ({window['state']}), expecting "
                            f"{', '.join(window['expected'])} in {archives} archive"
                            f"{'' if archives == 1 else 's'}; deadline {window['deadline']}")


def cmd_window_close(ctx: Context) -> int:
    answer = ctx.api().call("POST", f"/v1/windows/{_segment(ctx.args.window_id)}/close")
    # one reason per shard that closed (app.py close_window)
    reasons = "; ".join(answer.get("reasons") or []) or "nothing to close"
    return ctx.show(answer, f"{answer['window_id']}: {answer['state']} ({reasons})")


def cmd_window_status(ctx: Context) -> int:
    api, window_id = ctx.api(), ctx.args.window_id
    if window_id is None:
        windows = api.call("GET", "/v1/windows").get("windows", [])
        current = views.current_of(windows)
        if current is None:
            last = f"; the last was {windows[0]['window_id']} ({windows[0]['state']})" \
                if windows else ""
            return ctx.show({"current": None}, f"no window open{last}")
        window_id = current["window_id"]
    window = api.call("GET", f"/v1/windows/{_segment(window_id)}")
    return ctx.show(window, views.window_summary(window))


def cmd_window_history(ctx: Context) -> int:
    windows = ctx.api().call("GET", "/v1/windows").get("windows", [])[:ctx.args.limit]
    return ctx.show({"windows": windows}, views.windows_table(windows))


# the fleet -------------------------------------------------------------------------------------
STALE_EXIT = 1  # cli.py: a monitoring script runs `offsite-admin status`


def cmd_status(ctx: Context) -> int:
    answer = ctx.api().call("GET", "/v1/status")
    ctx.show(answer, views.fleet_text(answer))
    return STALE_EXIT if answer.get("stale") else 0


# snapshots and cost ----------------------------------------------------------------------------
def cmd_restore(ctx: Context) -> int:
    """`POST /v1/restores`: a restore window on the host's own single-host archive, made from
    the chosen recovery point; the host then fetches it with `offsite-host restore`."""
    args = ctx.args
    body: dict[str, Any] = {"host": args.host}
    if args.snapshot:
        body["snapshot_id"] = args.snapshot
    else:
        body["day"] = args.date
    if args.allow_incomplete:
        body["allow_incomplete"] = True
    answer = ctx.api().call("POST", "/v1/restores", body)
    which = (f"--snapshot {answer.get('snapshot_id')}" if args.snapshot
             else f"--date {answer.get('day')}")
    text = (f"restore window {answer.get('window_id')} opening for {args.host}: recovery point "
            f"{answer.get('snapshot_id')} of {answer.get('day')}"
            f"{'' if answer.get('complete') else ' (INCOMPLETE: its backup did not finish)'}, "
            f"until {answer.get('deadline')}.\nOn the host run: offsite-host restore {which} "
            "--to DIR   (it waits while the archive starts)")
    return ctx.show(answer, text)


def cmd_snapshots(ctx: Context) -> int:
    answer = ctx.api().call("GET", "/v1/snapshots", query={"host": ctx.args.host})
    return ctx.show(answer, views.snapshots_table(answer))


def cmd_cost(ctx: Context) -> int:
    args, api = ctx.args, ctx.api()
    listed = api.call("GET", "/v1/windows").get("windows", [])
    closed = [w for w in listed if w.get("state") == "CLOSED"
              and w.get("purpose", "backup") == "backup"][:args.windows]
    windows = [api.call("GET", f"/v1/windows/{_segment(w['window_id'])}") for w in closed]
    observed = observe(
        windows, volume_gib=args.volume_gib, retention_days=args.retention_days,
        instance_type=args.instance_type, snapshot_settle_s=args.snapshot_settle_minutes * 60,
        stored_bytes=None if args.stored_gib is None else round(args.stored_gib * GIB))
    if args.window_hours is not None:
        observed = dataclasses.replace(observed, usage=dataclasses.replace(
            observed.usage, window_s=args.window_hours * 3600))
    prices = load_prices(Path(args.prices) if args.prices else None)
    costs = designs(observed.usage, prices)
    return ctx.show(views.cost_data(observed, costs, prices),
                    views.cost_text(observed, compare(observed.usage, prices)))


# smoke and destroy --------------------------------------------------------------------------
def cmd_smoke(ctx: Context) -> int:
    args, api = ctx.args, ctx.api()
    prices = load_prices(Path(args.prices) if args.prices else None)
    say = functools.partial(print, file=sys.stderr if args.json else sys.stdout, flush=True)
    settings = SmokeSettings(
        host_command=(args.host_command,) if args.host_command else default_host_command(),
        window_hours=args.window_hours, wait_s=args.wait_minutes * 60,
        size_mib=args.size_mib, work_parent=Path(args.work_dir) if args.work_dir else None)
    cleanup = Cleanup(api, ctx.client("ec2"), ctx.client("dynamodb"),
                      Target(args.stage, local=bool(args.endpoint_url)).table,
                      wait_s=settings.wait_s, poll_s=settings.poll_s)
    steps, leftovers = Smoke(api, cleanup, settings, prices, say)()
    data = summary_data(steps, leftovers)
    ctx.show(data, render(steps, leftovers, prices))
    return 0 if data["ok"] else 1


def cmd_destroy(ctx: Context) -> int:
    args = ctx.args
    target = Target(args.stage, local=bool(args.endpoint_url))
    clients = (ctx.client("cloudformation"), ctx.client("dynamodb"), ctx.client("ssm"),
               ctx.client("ec2"))
    stage = find_stage(target, *clients)
    plan = plan_destroy(stage, args.keep_snapshots)
    print(plan.text(), file=sys.stderr)
    if not args.yes and not _confirmed(f"Destroy stage {target.stage}?"):
        raise AdminError("nothing done")
    if plan.snapshots_deleted and not args.yes and not _confirmed(
            f"Delete {len(stage.snapshots)} snapshot(s), "
            f"{sum(s.gib for s in stage.snapshots):g} GiB of volumes, for good?"):
        raise AdminError("nothing done")
    failed = apply_destroy(stage, plan, *clients, lambda line: print(line, file=sys.stderr))
    data = {"stage": target.stage, "plan": list(plan.lines), "not_removed": failed}
    if failed:
        ctx.show(data, "could not remove:\n  " + "\n  ".join(failed))
        return 1
    return ctx.show(data, f"destroyed stage {target.stage}")


def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


HANDLERS: dict[tuple[str, str | None], Callable[[Context], int]] = {
    ("init", None): cmd_init,
    ("host", "add"): cmd_host_add, ("host", "revoke"): cmd_host_revoke,
    ("host", "list"): cmd_host_list,
    ("window", "open"): cmd_window_open, ("window", "close"): cmd_window_close,
    ("window", "status"): cmd_window_status, ("window", "history"): cmd_window_history,
    ("status", None): cmd_status,
    ("snapshots", None): cmd_snapshots, ("restore", None): cmd_restore,
    ("cost", None): cmd_cost,
    ("smoke", None): cmd_smoke, ("destroy", None): cmd_destroy,
}
