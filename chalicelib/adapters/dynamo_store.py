"""The store on one DynamoDB table (partition key `pk`, sort key `sk`, TTL on `expires_at`).

    pk                 sk              what
    ACTIVE             ACTIVE          the guard: id of the one active window
    WINDOWS            <window id>     index of windows (ids sort by open time)
    WINDOW#<id>        META            state, deadline, expected hosts, instance, address, reason,
                                       purpose (backup | restore) and, for a restore, the
                                       snapshot served and the volume made from it
    WINDOW#<id>        REPORT#<host>   a host's report
    WINDOW#<id>        SNAP#<host>     a host's snapshot: claimed -> pending -> completed|failed
    SNAPSHOT#<snap id> SNAPSHOT        snapshot id -> window and host, for EBS events
    HOST               <name>          an enrolled host
    NONCE#<key>#<nonce> NONCE          a request nonce already seen (expires by TTL)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from chalicelib.adapters.store import WindowActiveError
from chalicelib.records import Host, Report, SnapshotRecord
from chalicelib.window import SnapshotStatus, State, Window

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_ACTIVE = {"pk": "ACTIVE", "sk": "ACTIVE"}
_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()


def _dump(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _SERIALIZER.serialize(v) for k, v in item.items() if v is not None}


def _load(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _DESERIALIZER.deserialize(v) for k, v in item.items()}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _window_key(window_id: str, sk: str = "META") -> dict[str, str]:
    return {"pk": f"WINDOW#{window_id}", "sk": sk}


class DynamoStore:
    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._db = client
        self._table = table_name

    # windows ---------------------------------------------------------------------------
    def create_window(self, window: Window) -> None:
        # The guard and the window are written together: two opens racing both try to create
        # ACTIVE; the loser's whole transaction is cancelled and it learns who is active.
        meta = {**_window_key(window.window_id), **_window_attrs(window)}
        try:
            self._db.transact_write_items(TransactItems=[
                {"Put": {"TableName": self._table,
                         "Item": _dump({**_ACTIVE, "window_id": window.window_id}),
                         "ConditionExpression": "attribute_not_exists(pk)"}},
                {"Put": {"TableName": self._table, "Item": _dump(meta),
                         "ConditionExpression": "attribute_not_exists(pk)"}},
                {"Put": {"TableName": self._table,
                         "Item": _dump({"pk": "WINDOWS", "sk": window.window_id})}},
            ])
        except ClientError as exc:
            active = self.active_window_id()
            if _code(exc) == "TransactionCanceledException" and active is not None:
                raise WindowActiveError(active) from exc
            raise

    def get_window(self, window_id: str) -> Window | None:
        items = self._query(f"WINDOW#{window_id}")
        meta = next((i for i in items if i["sk"] == "META"), None)
        if meta is None:
            return None
        reports = {i["sk"][len("REPORT#"):]: i["status"] for i in items
                   if i["sk"].startswith("REPORT#")}
        snaps = {i["sk"][len("SNAP#"):]: SnapshotStatus(i["status"]) for i in items
                 if i["sk"].startswith("SNAP#")}
        return _window_from(meta, reports, snaps)

    def active_window_id(self) -> str | None:
        got = self._db.get_item(TableName=self._table, Key=_dump(_ACTIVE), ConsistentRead=True)
        item = got.get("Item")
        return str(_load(item)["window_id"]) if item else None

    def list_windows(self, limit: int) -> list[Window]:
        page = self._db.query(
            TableName=self._table, KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues=_dump({":pk": "WINDOWS"}),
            ScanIndexForward=False, Limit=limit)
        ids = [str(_load(i)["sk"]) for i in page.get("Items", [])]
        return [w for w in (self.get_window(i) for i in ids) if w is not None]

    def transition(self, window_id: str, source: State, target: State, reason: str,
                   now: datetime, address: str | None = None) -> bool:
        # Timeline of two Lambdas handling the same event:
        #   A reads OPEN -> B reads OPEN -> A writes CLOSING if state=OPEN (ok)
        #   -> B writes CLOSING if state=OPEN (fails: B takes no action).
        update = (f"SET #state = :target, reason = :reason, updated_at = :now, "
                  f"entered_{target.value} = :now")
        values: dict[str, Any] = {":source": source.value, ":target": target.value,
                                  ":reason": reason, ":now": now.isoformat()}
        if address:
            update += ", address = :address"
            values[":address"] = address
        change: dict[str, Any] = {"TableName": self._table, "Key": _dump(_window_key(window_id)),
                  "UpdateExpression": update, "ConditionExpression": "#state = :source",
                  "ExpressionAttributeNames": {"#state": "state"},
                  "ExpressionAttributeValues": _dump(values)}
        try:
            if target.active:
                self._db.update_item(**change)
            else:
                release: dict[str, Any] = {"TableName": self._table, "Key": _dump(_ACTIVE),
                           "ConditionExpression": "window_id = :id",
                           "ExpressionAttributeValues": _dump({":id": window_id})}
                items: Any = [{"Update": change}, {"Delete": release}]
                self._db.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if _code(exc) in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                return False
            raise
        return True

    # reports ---------------------------------------------------------------------------
    def put_report(self, report: Report) -> bool:
        # A failed report may be replaced (the host ran again); a success is final.
        item = {**_window_key(report.window_id, f"REPORT#{report.host}"),
                "status": report.status, "bytes_sent": report.bytes_sent,
                "files": report.files, "duration_s": str(report.duration_s),
                "detail": report.detail, "received_at": report.received_at.isoformat()}
        return self._put_if(item, "attribute_not_exists(pk) OR #status = :failed",
                            {"#status": "status"}, {":failed": "failed"})

    def reports(self, window_id: str) -> list[Report]:
        return [
            Report(host=i["sk"][len("REPORT#"):], window_id=window_id, status=i["status"],
                   bytes_sent=int(i["bytes_sent"]), files=int(i["files"]),
                   duration_s=float(i["duration_s"]), detail=i["detail"],
                   received_at=datetime.fromisoformat(i["received_at"]))
            for i in self._query(f"WINDOW#{window_id}", "REPORT#")
        ]

    # snapshots -------------------------------------------------------------------------
    def claim_snapshot(self, record: SnapshotRecord) -> bool:
        item = {**_window_key(record.window_id, f"SNAP#{record.host}"),
                "status": SnapshotStatus.CLAIMED.value, "volume_id": record.volume_id,
                "complete": record.complete, "claimed_at": record.claimed_at.isoformat()}
        return self._put_if(item, "attribute_not_exists(pk)")

    def release_claim(self, window_id: str, host: str) -> None:
        try:
            self._db.delete_item(
                TableName=self._table, Key=_dump(_window_key(window_id, f"SNAP#{host}")),
                ConditionExpression="#status = :claimed",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=_dump({":claimed": SnapshotStatus.CLAIMED.value}))
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                raise

    def record_snapshot_id(self, window_id: str, host: str, snapshot_id: str) -> None:
        self._db.transact_write_items(TransactItems=[
            {"Update": {
                "TableName": self._table, "Key": _dump(_window_key(window_id, f"SNAP#{host}")),
                "UpdateExpression": "SET #status = :pending, snapshot_id = :sid",
                "ConditionExpression": "#status = :claimed",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": _dump({
                    ":pending": SnapshotStatus.PENDING.value, ":sid": snapshot_id,
                    ":claimed": SnapshotStatus.CLAIMED.value})}},
            {"Put": {"TableName": self._table, "Item": _dump({
                "pk": f"SNAPSHOT#{snapshot_id}", "sk": "SNAPSHOT",
                "window_id": window_id, "host": host})}},
        ])

    def settle_snapshot(self, snapshot_id: str,
                        status: SnapshotStatus) -> SnapshotRecord | None:
        got = self._db.get_item(TableName=self._table, ConsistentRead=True,
                                Key=_dump({"pk": f"SNAPSHOT#{snapshot_id}", "sk": "SNAPSHOT"}))
        if "Item" not in got:
            return None
        owner = _load(got["Item"])
        try:
            updated = self._db.update_item(
                TableName=self._table,
                Key=_dump(_window_key(owner["window_id"], f"SNAP#{owner['host']}")),
                UpdateExpression="SET #status = :settled",
                ConditionExpression="#status = :pending",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=_dump({":settled": status.value,
                                                 ":pending": SnapshotStatus.PENDING.value}),
                ReturnValues="ALL_NEW")
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return None
            raise
        return _snapshot_from(_load(updated["Attributes"]))

    def snapshot_records(self, window_id: str) -> list[SnapshotRecord]:
        return [_snapshot_from(i) for i in self._query(f"WINDOW#{window_id}", "SNAP#")]

    # hosts -----------------------------------------------------------------------------
    def put_host(self, host: Host) -> None:
        self._db.put_item(TableName=self._table, Item=_dump({
            "pk": "HOST", "sk": host.name, "public_key": host.public_key,
            "enabled": host.enabled, "volume_id": host.volume_id,
            "enrolled_at": host.enrolled_at.isoformat()}))

    def get_host(self, name: str) -> Host | None:
        got = self._db.get_item(TableName=self._table, ConsistentRead=True,
                                Key=_dump({"pk": "HOST", "sk": name}))
        return _host_from(_load(got["Item"])) if "Item" in got else None

    def list_hosts(self) -> list[Host]:
        return [_host_from(i) for i in self._query("HOST")]

    # nonces ----------------------------------------------------------------------------
    def remember_nonce(self, keyid: str, nonce: str, now: int, expires_at: int) -> bool:
        # Timeline of a replay: request 1 puts NONCE#c#n (expires t+600) -> request 2, same
        # nonce, puts again: the item exists and has not expired, the put fails: refused.
        # TTL deletion lags by up to days, so an expired item is overwritten, not trusted.
        return self._put_if(
            {"pk": f"NONCE#{keyid}#{nonce}", "sk": "NONCE", "expires_at": expires_at},
            "attribute_not_exists(pk) OR expires_at <= :now", values={":now": now})

    # helpers ---------------------------------------------------------------------------
    def _put_if(self, item: Mapping[str, Any], condition: str,
                names: Mapping[str, str] | None = None,
                values: Mapping[str, Any] | None = None) -> bool:
        extra: dict[str, Any] = {}
        if names:
            extra["ExpressionAttributeNames"] = dict(names)
        if values:
            extra["ExpressionAttributeValues"] = _dump(values)
        try:
            self._db.put_item(TableName=self._table, Item=_dump(item),
                              ConditionExpression=condition, **extra)
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def _query(self, pk: str, sk_prefix: str | None = None) -> list[dict[str, Any]]:
        condition = "pk = :pk"
        values: dict[str, Any] = {":pk": pk}
        if sk_prefix:
            condition += " AND begins_with(sk, :prefix)"
            values[":prefix"] = sk_prefix
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {}
        while True:
            page = self._db.query(TableName=self._table, KeyConditionExpression=condition,
                                  ExpressionAttributeValues=_dump(values),
                                  ConsistentRead=True, **kwargs)
            items.extend(_load(i) for i in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def create_table(client: DynamoDBClient, table_name: str) -> None:
    """The table as the deploy template makes it (used by the local stack and the tests)."""
    client.create_table(
        TableName=table_name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                              {"AttributeName": "sk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                   {"AttributeName": "sk", "KeyType": "RANGE"}])
    client.get_waiter("table_exists").wait(TableName=table_name)
    client.update_time_to_live(
        TableName=table_name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"})


def _window_attrs(window: Window) -> dict[str, Any]:
    return {
        "state": window.state.value, "opened_at": window.opened_at.isoformat(),
        "deadline": window.deadline.isoformat(), "expected": sorted(window.expected),
        "instance_id": window.instance_id, "trigger": window.trigger,
        "updated_at": window.updated_at.isoformat(), "address": window.address,
        "reason": window.reason, "purpose": window.purpose, "snapshot_id": window.snapshot_id,
        "restore_volume_id": window.restore_volume_id,
        **{f"entered_{state}": at.isoformat() for state, at in window.entered.items()},
    }


def _window_from(meta: Mapping[str, Any], reports: Mapping[str, str],
                 snaps: Mapping[str, SnapshotStatus]) -> Window:
    return Window(
        window_id=meta["pk"][len("WINDOW#"):], state=State(meta["state"]),
        opened_at=datetime.fromisoformat(meta["opened_at"]),
        deadline=datetime.fromisoformat(meta["deadline"]),
        expected=frozenset(meta.get("expected", [])), instance_id=meta["instance_id"],
        trigger=meta["trigger"], updated_at=datetime.fromisoformat(meta["updated_at"]),
        address=meta.get("address"), reason=meta.get("reason", ""),
        reports=dict(reports), snapshots=dict(snaps),
        purpose=meta.get("purpose", "backup"), snapshot_id=meta.get("snapshot_id"),
        restore_volume_id=meta.get("restore_volume_id"),
        entered={k[len("entered_"):]: datetime.fromisoformat(v) for k, v in meta.items()
                 if k.startswith("entered_")})


def _snapshot_from(item: Mapping[str, Any]) -> SnapshotRecord:
    return SnapshotRecord(
        window_id=item["pk"][len("WINDOW#"):], host=item["sk"][len("SNAP#"):],
        volume_id=item["volume_id"], status=SnapshotStatus(item["status"]),
        complete=bool(item["complete"]), claimed_at=datetime.fromisoformat(item["claimed_at"]),
        snapshot_id=item.get("snapshot_id"))


def _host_from(item: Mapping[str, Any]) -> Host:
    return Host(name=item["sk"], public_key=item["public_key"], enabled=bool(item["enabled"]),
                volume_id=item["volume_id"],
                enrolled_at=datetime.fromisoformat(item["enrolled_at"]))
