"""The stores on one DynamoDB table (partition key `pk`, sort key `sk`, TTL on `expires_at`).

    pk                 sk              what
    ACTIVE             BACKUP          the guard: id of the one active backup window
    ACTIVE             RESTORE#<host>  the guard of the host's one active restore
    WINDOWS            <window id>     index of windows (ids sort by open time)
    WINDOW#<id>        META            state, deadline, expected hosts, reason, purpose (backup |
                                       restore) and, for a restore, the snapshot served
    WINDOW#<id>        SHARD#<shard>   a shard: its hosts, state, instance, address, volumes
    WINDOW#<id>        REPORT#<host>   a host's report
    WINDOW#<id>        SNAP#<host>     a host's snapshot: claimed -> pending -> completed|failed
    INSTANCE#<id>      INSTANCE        instance id -> window and shard, for EC2 events
    SNAPSHOT#<snap id> SNAPSHOT        snapshot id -> window and host, for EBS events
    HOST               <name>          an enrolled host
    NONCE#<key>#<nonce> NONCE          a request nonce already seen (expires by TTL)
    STALE              <host>          the admins were told this host is stale (since when)
    EVALUATED          STALENESS       when the fleet's staleness was last evaluated
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from chalicelib.adapters.store import WindowActiveError, guard_of
from chalicelib.records import Host, Report, SnapshotRecord
from chalicelib.window import Shard, SnapshotStatus, State, Window

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

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


class _Table:
    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._db = client
        self._table = table_name

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

    def _get(self, key: Mapping[str, str]) -> dict[str, Any] | None:
        got = self._db.get_item(TableName=self._table, Key=_dump(key), ConsistentRead=True)
        return _load(got["Item"]) if "Item" in got else None

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


# TransactWriteItems takes at most 100 actions ("TransactWriteItems", DynamoDB API Reference):
# a window's guard, META and index, and its shards when they fit; more shards are written first.
_TRANSACTION_LIMIT = 100


class DynamoWindowStore(_Table):
    # windows ---------------------------------------------------------------------------
    def create_window(self, window: Window) -> None:
        # The guard and the window are written together: two opens racing both try to create
        # the guard; the loser's whole transaction is cancelled and it learns who is active.
        guard = {"pk": "ACTIVE", "sk": guard_of(window)}
        shards = [{"Put": {"TableName": self._table, "Item": _dump(_shard_item(window.window_id,
                                                                                shard))}}
                  for shard in window.shards.values()]
        inline = len(shards) + 3 <= _TRANSACTION_LIMIT
        if not inline:  # inert until META exists; removed again if the guard is refused
            for chunk in range(0, len(shards), 25):
                self._db.transact_write_items(TransactItems=shards[chunk:chunk + 25])  # type: ignore[arg-type]
        items: list[Any] = [
            {"Put": {"TableName": self._table,
                     "Item": _dump({**guard, "window_id": window.window_id}),
                     "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Put": {"TableName": self._table,
                     "Item": _dump({**_window_key(window.window_id), **_window_attrs(window)}),
                     "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Put": {"TableName": self._table,
                     "Item": _dump({"pk": "WINDOWS", "sk": window.window_id})}},
            *(shards if inline else []),
        ]
        try:
            self._db.transact_write_items(TransactItems=items)
        except ClientError as exc:
            active = self.active_window_id(guard["sk"])
            if not inline:
                for shard_id in window.shards:
                    self._db.delete_item(TableName=self._table, Key=_dump(
                        _window_key(window.window_id, f"SHARD#{shard_id}")))
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
        shards = [_shard_from(i) for i in items if i["sk"].startswith("SHARD#")]
        started = frozenset(i["sk"][len("START#"):] for i in items
                            if i["sk"].startswith("START#"))
        return _window_from(meta, shards, reports, snaps, started)

    def active_window_id(self, guard: str = "BACKUP") -> str | None:
        item = self._get({"pk": "ACTIVE", "sk": guard})
        return str(item["window_id"]) if item else None

    def active_window_ids(self) -> list[str]:
        return sorted(str(i["window_id"]) for i in self._query("ACTIVE"))

    def list_windows(self, limit: int) -> list[Window]:
        page = self._db.query(
            TableName=self._table, KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues=_dump({":pk": "WINDOWS"}),
            ScanIndexForward=False, Limit=limit)
        ids = [str(_load(i)["sk"]) for i in page.get("Items", [])]
        return [w for w in (self.get_window(i) for i in ids) if w is not None]

    def transition(self, window_id: str, source: State, target: State, reason: str,
                   now: datetime) -> bool:
        # Timeline of two Lambdas concluding the same window (each finished a last shard):
        #   A reads OPEN -> B reads OPEN -> A writes CLOSED if state=OPEN (ok, guard released)
        #   -> B writes CLOSED if state=OPEN (fails: B takes no action).
        change = self._state_change(_window_key(window_id), source, target, reason, now)
        try:
            if target.active:
                self._db.update_item(**change)
            else:
                meta = self._get(_window_key(window_id)) or {}
                guard = "RESTORE#" + min(meta.get("expected", [""])) \
                    if meta.get("purpose") == "restore" else "BACKUP"
                release: dict[str, Any] = {
                    "TableName": self._table, "Key": _dump({"pk": "ACTIVE", "sk": guard}),
                    "ConditionExpression": "attribute_not_exists(pk) OR window_id = :id",
                    "ExpressionAttributeValues": _dump({":id": window_id})}
                items: Any = [{"Update": change}, {"Delete": release}]
                self._db.transact_write_items(TransactItems=items)
        except ClientError as exc:
            if _code(exc) in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                return False
            raise
        return True

    def transition_shard(self, window_id: str, shard_id: str, source: State, target: State,
                         reason: str, now: datetime, address: str | None = None,
                         volumes: Mapping[str, str] | None = None,
                         unless_started: Collection[str] = ()) -> bool:
        # Timeline of a duplicated "stopped" event: A reads CLOSING -> B reads CLOSING ->
        # A writes SNAPSHOTTING if state=CLOSING (ok: A snapshots) -> B's write fails (no
        # second round of snapshots).
        # An idle close against a session (record_start): the reconciler reads OPEN with h
        # idle -> h's session reads OPEN -> either the close's transaction (state=OPEN, no
        # START#h) lands first and the session's (state=OPEN, START#h) fails: refused, never
        # certified for a closing archive; or the session's lands first and the close's fails:
        # h is no longer idle, the archive stays up for it.
        extra = {"address": address, "volumes": dict(volumes) if volumes else None}
        change = self._state_change(_window_key(window_id, f"SHARD#{shard_id}"), source, target,
                                    reason, now, extra)
        try:
            if unless_started:  # at most HOSTS_PER_ARCHIVE (21) checks: within the 100 items
                items: Any = [{"Update": change}, *(
                    {"ConditionCheck": {"TableName": self._table,
                                        "Key": _dump(_window_key(window_id, f"START#{host}")),
                                        "ConditionExpression": "attribute_not_exists(pk)"}}
                    for host in sorted(unless_started))]
                self._db.transact_write_items(TransactItems=items)
            else:
                self._db.update_item(**change)
        except ClientError as exc:
            if _code(exc) in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                return False
            raise
        return True

    def _state_change(self, key: Mapping[str, str], source: State, target: State, reason: str,
                      now: datetime, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        update = (f"SET #state = :target, reason = :reason, updated_at = :now, "
                  f"entered_{target.value} = :now")
        values: dict[str, Any] = {":source": source.value, ":target": target.value,
                                  ":reason": reason, ":now": now.isoformat()}
        for name, value in (extra or {}).items():
            if value:
                update += f", {name} = :{name}"
                values[f":{name}"] = value
        return {"TableName": self._table, "Key": _dump(key), "UpdateExpression": update,
                "ConditionExpression": "#state = :source",
                "ExpressionAttributeNames": {"#state": "state"},
                "ExpressionAttributeValues": _dump(values)}

    def record_launch(self, window_id: str, shard_id: str, instance_id: str,
                      instance_type: str) -> bool:
        # A duplicated launch invocation gets the same instance back from RunInstances (same
        # ClientToken), so writing the same id twice is fine; another id is refused.
        try:
            self._db.transact_write_items(TransactItems=[
                {"Update": {
                    "TableName": self._table,
                    "Key": _dump(_window_key(window_id, f"SHARD#{shard_id}")),
                    "UpdateExpression": "SET instance_id = :iid, instance_type = :type",
                    "ConditionExpression": "#state = :opening AND (attribute_not_exists("
                                           "instance_id) OR instance_id = :iid)",
                    "ExpressionAttributeNames": {"#state": "state"},
                    "ExpressionAttributeValues": _dump({
                        ":iid": instance_id, ":type": instance_type,
                        ":opening": State.OPENING.value})}},
                {"Put": {"TableName": self._table, "Item": _dump({
                    "pk": f"INSTANCE#{instance_id}", "sk": "INSTANCE",
                    "window_id": window_id, "shard_id": shard_id})}},
            ])
        except ClientError as exc:
            if _code(exc) == "TransactionCanceledException":
                return False
            raise
        return True

    def find_instance(self, instance_id: str) -> tuple[str, str] | None:
        item = self._get({"pk": f"INSTANCE#{instance_id}", "sk": "INSTANCE"})
        return (str(item["window_id"]), str(item["shard_id"])) if item else None

    # reports ---------------------------------------------------------------------------
    def record_start(self, window_id: str, shard_id: str, host: str, at: datetime) -> bool:
        # Only while the host's shard is OPEN (see transition_shard's idle close); a second
        # session keeps the first time. A ConditionCheck is authorised as
        # dynamodb:ConditionCheckItem ("Using IAM with DynamoDB transactions", Developer Guide).
        try:
            self._db.transact_write_items(TransactItems=[
                {"ConditionCheck": {
                    "TableName": self._table,
                    "Key": _dump(_window_key(window_id, f"SHARD#{shard_id}")),
                    "ConditionExpression": "#state = :open",
                    "ExpressionAttributeNames": {"#state": "state"},
                    "ExpressionAttributeValues": _dump({":open": State.OPEN.value})}},
                {"Update": {
                    "TableName": self._table,
                    "Key": _dump(_window_key(window_id, f"START#{host}")),
                    "UpdateExpression": "SET #at = if_not_exists(#at, :at)",
                    "ExpressionAttributeNames": {"#at": "at"},
                    "ExpressionAttributeValues": _dump({":at": at.isoformat()})}}])
        except ClientError as exc:
            if _code(exc) == "TransactionCanceledException":
                return False
            raise
        return True

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
        owner = self._get({"pk": f"SNAPSHOT#{snapshot_id}", "sk": "SNAPSHOT"})
        if owner is None:
            return None
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


class DynamoHostStore(_Table):
    def put_host(self, host: Host) -> None:
        self._db.put_item(TableName=self._table, Item=_dump({
            "pk": "HOST", "sk": host.name, "public_key": host.public_key,
            "enabled": host.enabled, "size_gib": host.size_gib,
            "start_grace_minutes": host.start_grace_minutes,
            "enrolled_at": host.enrolled_at.isoformat()}))

    def get_host(self, name: str) -> Host | None:
        item = self._get({"pk": "HOST", "sk": name})
        return _host_from(item) if item else None

    def list_hosts(self) -> list[Host]:
        return [_host_from(i) for i in self._query("HOST")]


class DynamoStaleMarkStore(_Table):
    """Marks are written with UpdateItem (which creates the item) and removed with a
    conditional DeleteItem: the functions that evaluate staleness hold no PutItem."""

    def stale_marks(self) -> dict[str, datetime]:
        return {str(i["sk"]): datetime.fromisoformat(i["at"]) for i in self._query("STALE")}

    def mark_stale(self, host: str, at: datetime) -> bool:
        # Timeline of two conclusions evaluating at once: A marks h if absent (ok: A tells the
        # admins) -> B marks h if absent (fails: B tells nobody).
        return self._update_if({"pk": "STALE", "sk": host}, "SET #at = :at",
                               "attribute_not_exists(pk)", {":at": at.isoformat()})

    def clear_stale(self, host: str) -> bool:
        try:
            self._db.delete_item(TableName=self._table, Key=_dump({"pk": "STALE", "sk": host}),
                                 ConditionExpression="attribute_exists(pk)")
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def claim_evaluation(self, now: datetime, due: datetime) -> bool:
        # ISO 8601 times in UTC compare as strings in time order.
        return self._update_if({"pk": "EVALUATED", "sk": "STALENESS"}, "SET #at = :at",
                               "attribute_not_exists(pk) OR #at <= :due",
                               {":at": now.isoformat(), ":due": due.isoformat()})

    def _update_if(self, key: Mapping[str, str], update: str, condition: str,
                   values: Mapping[str, Any]) -> bool:
        try:
            self._db.update_item(TableName=self._table, Key=_dump(key),
                                 UpdateExpression=update, ConditionExpression=condition,
                                 ExpressionAttributeNames={"#at": "at"},
                                 ExpressionAttributeValues=_dump(values))
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True


class DynamoNonceStore(_Table):
    def remember_nonce(self, keyid: str, nonce: str, now: int, expires_at: int) -> bool:
        # Timeline of a replay: request 1 puts NONCE#c#n (expires t+600) -> request 2, same
        # nonce, puts again: the item exists and has not expired, the put fails: refused.
        # TTL deletion lags by up to days, so an expired item is overwritten, not trusted.
        return self._put_if(
            {"pk": f"NONCE#{keyid}#{nonce}", "sk": "NONCE", "expires_at": expires_at},
            "attribute_not_exists(pk) OR expires_at <= :now", values={":now": now})


class DynamoStore(DynamoWindowStore, DynamoHostStore, DynamoNonceStore, DynamoStaleMarkStore):
    """The stores on one table, as one object (the composition root hands each service
    the interface it needs)."""


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
        "trigger": window.trigger, "updated_at": window.updated_at.isoformat(),
        "reason": window.reason, "purpose": window.purpose, "snapshot_id": window.snapshot_id,
        "start_grace": dict(window.start_grace) or None,
        **{f"entered_{state}": at.isoformat() for state, at in window.entered.items()},
    }


def _shard_item(window_id: str, shard: Shard) -> dict[str, Any]:
    return {
        **_window_key(window_id, f"SHARD#{shard.shard_id}"), "hosts": sorted(shard.hosts),
        "state": shard.state.value, "updated_at": shard.updated_at.isoformat(),
        "instance_id": shard.instance_id, "instance_type": shard.instance_type,
        "address": shard.address, "volumes": dict(shard.volumes) or None,
        "reason": shard.reason,
        **{f"entered_{state}": at.isoformat() for state, at in shard.entered.items()},
    }


def _entered(item: Mapping[str, Any]) -> dict[str, datetime]:
    return {k[len("entered_"):]: datetime.fromisoformat(v) for k, v in item.items()
            if k.startswith("entered_")}


def _shard_from(item: Mapping[str, Any]) -> Shard:
    return Shard(
        shard_id=item["sk"][len("SHARD#"):], hosts=frozenset(item.get("hosts", [])),
        state=State(item["state"]), updated_at=datetime.fromisoformat(item["updated_at"]),
        instance_id=item.get("instance_id"), instance_type=item.get("instance_type"),
        address=item.get("address"), volumes=dict(item.get("volumes") or {}),
        reason=item.get("reason", ""), entered=_entered(item))


def _window_from(meta: Mapping[str, Any], shards: list[Shard], reports: Mapping[str, str],
                 snaps: Mapping[str, SnapshotStatus],
                 started: frozenset[str] = frozenset()) -> Window:
    return Window(
        window_id=meta["pk"][len("WINDOW#"):], state=State(meta["state"]),
        opened_at=datetime.fromisoformat(meta["opened_at"]),
        deadline=datetime.fromisoformat(meta["deadline"]),
        expected=frozenset(meta.get("expected", [])), trigger=meta["trigger"],
        updated_at=datetime.fromisoformat(meta["updated_at"]), reason=meta.get("reason", ""),
        shards={s.shard_id: s for s in shards}, reports=dict(reports), snapshots=dict(snaps),
        purpose=meta.get("purpose", "backup"), snapshot_id=meta.get("snapshot_id"),
        start_grace={h: int(m) for h, m in (meta.get("start_grace") or {}).items()},
        started=started, entered=_entered(meta))


def _snapshot_from(item: Mapping[str, Any]) -> SnapshotRecord:
    return SnapshotRecord(
        window_id=item["pk"][len("WINDOW#"):], host=item["sk"][len("SNAP#"):],
        volume_id=item["volume_id"], status=SnapshotStatus(item["status"]),
        complete=bool(item["complete"]), claimed_at=datetime.fromisoformat(item["claimed_at"]),
        snapshot_id=item.get("snapshot_id"))


def _host_from(item: Mapping[str, Any]) -> Host:
    return Host(name=item["sk"], public_key=item["public_key"], enabled=bool(item["enabled"]),
                enrolled_at=datetime.fromisoformat(item["enrolled_at"]),
                size_gib=int(item.get("size_gib", 20)),
                start_grace_minutes=None if item.get("start_grace_minutes") is None
                else int(item["start_grace_minutes"]))
