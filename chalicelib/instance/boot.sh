#!/bin/bash
# offsite-boot: make the archive instance match its boot config. Runs at every boot.
#
# userdata.py renders EC2 user-data whose cloud-init bootcmd writes the config to
# $OFFSITE_ETC/instance.conf, this script to /usr/local/sbin/offsite-boot, and runs it at every
# boot, once the network is up and before sshd starts (see userdata.py for why bootcmd).
#
# Config, one record per line ('#' starts a comment line):
#   region <aws-region>
#   host_key_parameter <SSM parameter holding the sshd host private key>
#   ca <CA public key line>                 (one or more; several while the CA rotates)
#   host <name> <vol-id> [<uid>]            (one per host)
#   account_prefix <prefix>                 (optional; the account of host <name> is
#                                            <prefix><name>: chalicelib/accounts.py)
#   restore <name> <vol-id>                 (a restore volume for host <name>; also read, one
#                                            "<name> <vol-id>" per line, from the restore
#                                            command's output: see OFFSITE_RESTORE_COMMAND)
#
# For each host: a Unix account named <prefix><name> (the certificate's principal), password
# field "*", shell /bin/sh (sshd runs the certificate's forced rrsync through it), in group
# $OFFSITE_GROUP; its EBS volume, found by volume id, formatted only when blank, mounted at
# $OFFSITE_MOUNT_ROOT/<name>, owned by the account alone (0700). Then sshd: the CA key, one
# principals file per account, the host key from SSM, a drop-in. Running it again changes
# nothing, and it never formats a device that holds anything.
#
# A restore volume (made by the control plane from one of the host's snapshots) is mounted
# read-only (ro,noload) at $OFFSITE_RESTORE_ROOT/<name>: it holds what the host's volume held at
# snapshot time, whose root the host's account alone may read; it is never formatted or chowned.
#
# One host's failure does not stop the others; the exit status is 1 if anything failed.
#
# Environment (the defaults are the instance's; tests point them into a sandbox):
#   OFFSITE_ETC              /etc/offsite          config, CA key, principals, host key
#   OFFSITE_CONFIG           $OFFSITE_ETC/instance.conf
#   OFFSITE_SSHD_CONFIG      /etc/ssh/sshd_config  gets an Include of the drop-in dir if missing
#   OFFSITE_SSHD_DROPIN_DIR  /etc/ssh/sshd_config.d
#   OFFSITE_MOUNT_ROOT       /srv/offsite
#   OFFSITE_RESTORE_ROOT     /srv/offsite-restore
#   OFFSITE_RESTORE_COMMAND  sh command printing "<name> <vol-id>" restore records; default:
#                            the instance tag offsite-restore, from the instance metadata
#                            (IMDSv2; nothing when the tag or metadata tags are absent)
#   OFFSITE_BY_ID_DIR        /dev/disk/by-id
#   OFFSITE_GROUP            offsite
#   OFFSITE_RRSYNC           /usr/bin/rrsync       the path certificates' force-command runs
#   OFFSITE_DEVICE_WAIT      60                    seconds, in all, to wait for volumes
#   OFFSITE_HOST_KEY_COMMAND sh command printing the host private key; $1 = parameter, $2 =
#                            region; default: aws ssm get-parameter --with-decryption
#   OFFSITE_SSHD_RELOAD      sh command run when sshd's files changed; default: reload
#                            ssh.service or sshd.service if it is running
set -euo pipefail
shopt -s nullglob
umask 022
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

ETC=${OFFSITE_ETC:-/etc/offsite}
CONFIG=${OFFSITE_CONFIG:-$ETC/instance.conf}
SSHD_CONFIG=${OFFSITE_SSHD_CONFIG:-/etc/ssh/sshd_config}
DROPIN_DIR=${OFFSITE_SSHD_DROPIN_DIR:-/etc/ssh/sshd_config.d}
MOUNT_ROOT=${OFFSITE_MOUNT_ROOT:-/srv/offsite}
RESTORE_ROOT=${OFFSITE_RESTORE_ROOT:-/srv/offsite-restore}
IMDS=http://169.254.169.254/latest
# shellcheck disable=SC2016  # expanded by the sh that runs the command
FETCH_RESTORE='t=$(curl -sf -m 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" '
FETCH_RESTORE+="$IMDS/api/token"') && curl -sf -m 5 -H "X-aws-ec2-metadata-token: $t" '
FETCH_RESTORE+="$IMDS/meta-data/tags/instance/offsite-restore; true"
RESTORE_COMMAND=${OFFSITE_RESTORE_COMMAND-$FETCH_RESTORE}
BY_ID_DIR=${OFFSITE_BY_ID_DIR:-/dev/disk/by-id}
GROUP=${OFFSITE_GROUP:-offsite}
RRSYNC=${OFFSITE_RRSYNC:-/usr/bin/rrsync}
DEVICE_WAIT=${OFFSITE_DEVICE_WAIT:-60}
# shellcheck disable=SC2016  # $1 and $2 are expanded by the sh that runs the command
FETCH_FROM_SSM='aws ssm get-parameter --with-decryption --name "$1" --region "$2"'
FETCH_FROM_SSM+=' --query Parameter.Value --output text'
HOST_KEY_COMMAND=${OFFSITE_HOST_KEY_COMMAND:-$FETCH_FROM_SSM}

HOST_KEY=$ETC/ssh_host_key
CA_KEYS=$ETC/ca.pub
PRINCIPALS_DIR=$ETC/principals
DROPIN=$DROPIN_DIR/00-offsite.conf # sshd keeps the first value: read before 50-redhat.conf & co
EBS_LINK_PREFIX=nvme-Amazon_Elastic_Block_Store_
NAME_RE='^[a-z0-9][a-z0-9-]{0,31}$'
ACCOUNT_PREFIX_RE='^([a-z][a-z0-9-]{0,15})?$'
VOLUME_RE='^vol-([0-9a-f]{8}|[0-9a-f]{17})$' # chalicelib/names.py VOLUME_ID

REGION=
HOST_KEY_PARAMETER=
ACCOUNT_PREFIX=
CA_LINES=()
HOST_NAMES=()
declare -A HOST_VOLUME=() HOST_UID=() RESTORE_VOLUME=()
FAILED=()

log() { printf 'offsite-boot: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

read_config() {
  local kind rest name volume uid extra
  [[ -r $CONFIG ]] || die "cannot read $CONFIG"
  while read -r kind rest || [[ -n $kind ]]; do
    case $kind in
      '' | '#'*) ;;
      region) REGION=$rest ;;
      host_key_parameter) HOST_KEY_PARAMETER=$rest ;;
      ca) CA_LINES+=("$rest") ;;
      account_prefix)
        [[ $rest =~ $ACCOUNT_PREFIX_RE ]] || die "bad account prefix: $rest"
        ACCOUNT_PREFIX=$rest
        ;;
      host)
        read -r name volume uid extra <<<"$rest"
        [[ $name =~ $NAME_RE && ! $name =~ ^[0-9]+$ ]] || die "bad host name: $name"
        [[ $volume =~ $VOLUME_RE ]] || die "bad volume id for $name: $volume"
        [[ -z $uid || ($uid =~ ^[1-9][0-9]{3,4}$ && $uid -le 65533) ]] ||
          die "bad uid for $name: $uid"
        [[ -z $extra ]] || die "trailing fields on host $name"
        [[ -z ${HOST_VOLUME[$name]-} ]] || die "host $name listed twice"
        HOST_NAMES+=("$name")
        HOST_VOLUME[$name]=$volume
        HOST_UID[$name]=$uid
        ;;
      restore) add_restore "$rest" ;;
      *) die "unknown record in $CONFIG: $kind" ;;
    esac
  done <"$CONFIG"
  [[ $REGION =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]] || die "bad or missing region"
  [[ $HOST_KEY_PARAMETER =~ ^[A-Za-z0-9_./-]+$ ]] || die "bad or missing host_key_parameter"
  ((${#CA_LINES[@]} > 0)) || die "no ca line"
  for name in "${HOST_NAMES[@]}"; do
    ((${#ACCOUNT_PREFIX} + ${#name} <= 32)) || die "account $ACCOUNT_PREFIX$name is too long"
  done
  local path
  for path in "$ETC" "$SSHD_CONFIG" "$DROPIN_DIR" "$MOUNT_ROOT" "$RESTORE_ROOT" "$RRSYNC"; do
    [[ $path =~ ^/[A-Za-z0-9_./-]+$ ]] || die "unusable path (absolute, no spaces): $path"
  done
}

add_restore() {
  local name volume extra
  read -r name volume extra <<<"$1"
  [[ -n $name ]] || return 0
  [[ $name =~ $NAME_RE && ! $name =~ ^[0-9]+$ ]] || die "bad restore host name: $name"
  [[ $volume =~ $VOLUME_RE ]] || die "bad restore volume id for $name: $volume"
  [[ -z $extra ]] || die "trailing fields on restore $name"
  RESTORE_VOLUME[$name]=$volume
}

read_restore_records() {
  local line
  [[ -n $RESTORE_COMMAND ]] || return 0
  while read -r line || [[ -n $line ]]; do
    add_restore "$line"
  done < <(sh -c "$RESTORE_COMMAND" offsite-restore)
}

# Run "$@" in a subshell with errexit on; record a failure instead of stopping the other steps.
# (errexit is ignored in a function called from a condition, hence no `if ! "$@"`.)
step() {
  local rc
  set +e
  (
    set -e
    "$@"
  )
  rc=$?
  set -e
  if ((rc != 0)); then
    FAILED+=("$*")
    log "error: step failed ($rc): $*"
  fi
}

# Write stdin to $1 with mode $2, root-owned, replacing the file (atomically) only when the
# content differs. The comparison copy goes to $SCRATCH, so an unchanged file's directory is
# not touched either.
put_file() {
  local dest=$1 mode=$2 compare tmp
  compare=$(mktemp "$SCRATCH/put.XXXXXX")
  cat >"$compare"
  if ! [[ -f $dest ]] || ! cmp -s "$compare" "$dest"; then
    tmp=$(mktemp "$dest.XXXXXX")
    cat "$compare" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dest"
    log "wrote $dest"
  fi
  rm -f "$compare"
  ensure_attrs "$dest" 0:0 "$mode"
}

ensure_attrs() {
  local path=$1 owner=$2 mode=$3
  [[ $(stat -c %u:%g "$path") == "$owner" ]] || chown -h "$owner" "$path"
  [[ $(stat -c %a "$path") == "${mode#0}" ]] || chmod "$mode" "$path"
}

ensure_dir() {
  [[ -d $1 ]] || mkdir -p "$1"
  ensure_attrs "$1" 0:0 "$2"
}

ensure_group() {
  getent group "$GROUP" >/dev/null || groupadd "$GROUP"
}

ensure_rrsync() {
  [[ -x $RRSYNC ]] && return
  if ! command -v rsync >/dev/null; then
    if command -v dnf >/dev/null; then
      dnf -y install rsync
    elif command -v apt-get >/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y rsync
    fi
  fi
  [[ -x $RRSYNC ]] && return
  local source
  for source in /usr/share/doc/rsync*/scripts/rrsync* /usr/share/doc/rsync*/support/rrsync*; do
    mkdir -p "${RRSYNC%/*}"
    case $source in
      *.gz) gzip -dc "$source" | put_file "$RRSYNC" 0755 ;;
      *) put_file "$RRSYNC" 0755 <"$source" ;;
    esac
    return
  done
  log "no rrsync found in the rsync package"
  return 1
}

# The host private key lives in SSM Parameter Store, readable by the instance role only; it is
# never logged, and a fetch that fails or does not parse keeps the installed key.
install_host_key() {
  local key_text candidate
  ensure_dir "$ETC" 0755
  key_text=$(sh -c "$HOST_KEY_COMMAND" offsite-host-key "$HOST_KEY_PARAMETER" "$REGION")
  candidate=$(mktemp "$SCRATCH/host_key.XXXXXX") # 0600
  printf '%s\n' "$key_text" >"$candidate"
  if ! ssh-keygen -y -P '' -f "$candidate" >"$candidate.pub"; then
    rm -f "$candidate" "$candidate.pub"
    log "the fetched host key is not an unencrypted OpenSSH private key"
    return 1
  fi
  put_file "$HOST_KEY" 0600 <"$candidate"
  put_file "$HOST_KEY.pub" 0644 <"$candidate.pub"
  rm -f "$candidate" "$candidate.pub"
}

install_ca_keys() {
  ensure_dir "$ETC" 0755
  printf '%s\n' "${CA_LINES[@]}" | put_file "$CA_KEYS" 0644
  ssh-keygen -l -f "$CA_KEYS" >/dev/null
}

setup_host() {
  local name=$1 account=$ACCOUNT_PREFIX$1
  ensure_account "$account" "${HOST_UID[$name]}" "$MOUNT_ROOT/$name"
  ensure_dir "$PRINCIPALS_DIR" 0755
  printf '%s\n' "$account" | put_file "$PRINCIPALS_DIR/$account" 0644
  mount_volume "$name" "${HOST_VOLUME[$name]}"
}

# The account is named as the host, after the prefix. An existing account outside $GROUP is a
# system account (root, daemon, ec2-user, ...) that happens to share the name: never adopt it.
ensure_account() {
  local name=$1 uid=$2 home=$3 entry password
  if entry=$(getent passwd "$name"); then
    id -nG "$name" | tr ' ' '\n' | grep -qxF "$GROUP" ||
      { log "$name: an account outside group $GROUP already has this name"; return 1; }
    [[ -z $uid || $(id -u "$name") == "$uid" ]] ||
      { log "$name: account has uid $(id -u "$name"), config says $uid"; return 1; }
    [[ $entry == *":$home:/bin/sh" ]] || usermod -d "$home" -s /bin/sh "$name"
  else
    useradd -M -d "$home" -s /bin/sh -U -G "$GROUP" ${uid:+-u "$uid"} \
      -c "Offsite host $name" -p '*' "$name"
    log "$name: account created"
  fi
  # "*", not useradd's locking "!": with UsePAM no, sshd refuses "!" accounts even with a
  # certificate. Neither can match any password.
  password=$(getent shadow "$name" | cut -d: -f2)
  [[ $password == '*' ]] || usermod -p '*' "$name"
}

mount_volume() {
  local name=$1 volume=$2 mnt=$MOUNT_ROOT/$1 link device source
  link=$BY_ID_DIR/$EBS_LINK_PREFIX${volume/-/}
  wait_for "$link" || { log "$name: $volume is not attached ($link missing)"; return 1; }
  device=$(readlink -f "$link")
  [[ -b $device ]] || { log "$name: $link does not lead to a block device"; return 1; }
  ensure_dir "$MOUNT_ROOT" 0755
  if mountpoint -q "$mnt"; then
    source=$(findmnt -rno SOURCE --mountpoint "$mnt")
    [[ $(readlink -f "$source") == "$device" ]] ||
      { log "$name: $mnt holds $source, not $volume ($device)"; return 1; }
  else
    if source=$(findmnt -rno TARGET --source "$device"); then
      log "$name: $volume ($device) is already mounted at $source"
      return 1
    fi
    # Unmounted, the directory is root's: if the volume is missing, nothing lands on the root disk.
    ensure_dir "$mnt" 0755
    ensure_filesystem "$name" "$volume" "$device"
    mount -o nodev,nosuid,noexec,noatime "$device" "$mnt"
    log "$name: $volume mounted at $mnt"
  fi
  own_volume "$ACCOUNT_PREFIX$name" "$mnt"
}

# Read-only, never formatted, never chowned: the copy is what the snapshot holds. noload: no
# journal replay on a read-only mount.
mount_restore() {
  local name=$1 volume=${RESTORE_VOLUME[$1]} mnt=$RESTORE_ROOT/$1 link device source
  [[ -n ${HOST_VOLUME[$name]-} ]] || { log "restore for unknown host $name"; return 1; }
  link=$BY_ID_DIR/$EBS_LINK_PREFIX${volume/-/}
  wait_for "$link" || { log "$name: restore $volume is not attached ($link missing)"; return 1; }
  device=$(readlink -f "$link")
  [[ -b $device ]] || { log "$name: $link does not lead to a block device"; return 1; }
  ensure_dir "$RESTORE_ROOT" 0755
  if mountpoint -q "$mnt"; then
    source=$(findmnt -rno SOURCE --mountpoint "$mnt")
    [[ $(readlink -f "$source") == "$device" ]] ||
      { log "$name: $mnt holds $source, not $volume ($device)"; return 1; }
    return 0
  fi
  ensure_dir "$mnt" 0755
  mount -o ro,noload,nodev,nosuid,noexec,noatime "$device" "$mnt"
  log "$name: restore $volume mounted read-only at $mnt"
  [[ $(stat -c %u "$mnt") == "$(id -u "$ACCOUNT_PREFIX$name")" ]] ||
    log "$name: the restore's root belongs to uid $(stat -c %u "$mnt"), not the account"
}

wait_for() {
  while [[ ! -e $1 ]]; do
    (($(date +%s) < DEVICE_DEADLINE)) || return 1
    sleep 1
  done
}

# Format only a blank device: blkid's low-level probe finds no filesystem, RAID member or
# partition table, and the first MiB reads as zeros (blkid also answers "nothing" when it could
# not read the device, so the zero check keeps an unreadable or unrecognised volume unformatted).
ensure_filesystem() {
  local name=$1 volume=$2 device=$3 probe rc=0
  probe=$(blkid -p -o export "$device") || rc=$?
  if ((rc == 0)); then
    grep -q '^TYPE=' <<<"$probe" ||
      { log "$name: $volume holds no filesystem but: ${probe//$'\n'/ }"; return 1; }
    return 0
  fi
  ((rc == 2)) || { log "$name: blkid -p failed on $device ($rc)"; return 1; }
  cmp -s -n 1048576 "$device" /dev/zero ||
    { log "$name: $volume is not blank but has no known filesystem: not formatting"; return 1; }
  mkfs.ext4 -q -m 0 -L "${name:0:16}" "$device"
  log "$name: formatted $volume (ext4)"
}

# The volume's root belongs to the account alone. Files of another uid came from an earlier
# account of this host (the instance was rebuilt): they become the current account's.
own_volume() {
  local name=$1 mnt=$2 uid gid previous # name: the account
  uid=$(id -u "$name")
  gid=$(id -g "$name")
  previous=$(stat -c %u "$mnt")
  if [[ $previous != 0 && $previous != "$uid" ]]; then
    log "$name: files of uid $previous become $uid"
    find "$mnt" -xdev -uid "$previous" -exec chown -h "$uid:$gid" {} +
  fi
  ensure_attrs "$mnt" "$uid:$gid" 0700
}

# Principals files of hosts no longer configured go: their certificates stop working.
prune_principals() {
  local path account
  for path in "$PRINCIPALS_DIR"/*; do
    account=${path##*/}
    [[ $account == "$ACCOUNT_PREFIX"* && -n ${HOST_VOLUME[${account#"$ACCOUNT_PREFIX"}]-} ]] &&
      continue
    rm -f "$path"
    log "removed $path"
  done
}

dropin() {
  cat <<EOF
# Offsite archive instance: written by offsite-boot at every boot; edits are overwritten.
# Logins are certificates from the Offsite CA only, each valid for the one account whose
# principals file names it; the certificate's force-command runs rrsync on that host's volume.
HostKey $HOST_KEY
TrustedUserCAKeys $CA_KEYS
AuthorizedPrincipalsFile $PRINCIPALS_DIR/%u
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowAgentForwarding no
AllowTcpForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTunnel no
GatewayPorts no
# The key id of each accepted certificate (host, window, request) goes to the log.
LogLevel VERBOSE
# Hundreds of hosts may connect in the first minutes of a window.
MaxStartups 100:30:300

Match Group $GROUP
    AuthenticationMethods publickey
    AuthorizedKeysFile none
    PermitTTY no
    PermitUserRC no
    DisableForwarding yes
EOF
}

# The drop-in must be included by the main config, early: sshd keeps the first value it reads.
includes_dropin() {
  awk -v abs="$DROPIN_DIR/*.conf" -v rel="${DROPIN_DIR#/etc/ssh/}/*.conf" '
    tolower($1) == "include" { for (i = 2; i <= NF; i++) if ($i == abs || $i == rel) found = 1 }
    END { exit !found }' "$SSHD_CONFIG"
}

configure_sshd() {
  local candidate backup
  [[ -d /run/sshd ]] || mkdir -m 0755 /run/sshd # privilege separation dir, needed by sshd -t
  ensure_dir "$DROPIN_DIR" 0755
  candidate=$(mktemp "$SCRATCH/dropin.XXXXXX")
  dropin >"$candidate"
  sshd -t -f "$candidate" || { rm -f "$candidate"; return 1; }
  backup=$(mktemp "$SCRATCH/backup.XXXXXX")
  [[ -f $DROPIN ]] && cp -p "$DROPIN" "$backup"
  put_file "$DROPIN" 0644 <"$candidate"
  rm -f "$candidate"
  if ! includes_dropin; then
    { printf 'Include %s/*.conf\n' "$DROPIN_DIR" && cat "$SSHD_CONFIG"; } |
      put_file "$SSHD_CONFIG" "$(stat -c %a "$SSHD_CONFIG")"
  fi
  if ! sshd -t -f "$SSHD_CONFIG"; then
    log "sshd rejects $SSHD_CONFIG with the drop-in: restoring the previous drop-in"
    if [[ -s $backup ]]; then cp -p "$backup" "$DROPIN"; else rm -f "$DROPIN"; fi
    rm -f "$backup"
    return 1
  fi
  rm -f "$backup"
}

sshd_state() {
  local path
  for path in "$SSHD_CONFIG" "$DROPIN" "$HOST_KEY" "$CA_KEYS"; do
    if [[ -f $path ]]; then cksum <"$path"; else echo "no $path"; fi
  done
}

reload_sshd() {
  if [[ -n ${OFFSITE_SSHD_RELOAD-} ]]; then
    sh -c "$OFFSITE_SSHD_RELOAD"
    return
  fi
  command -v systemctl >/dev/null || return 0
  local unit
  for unit in ssh.service sshd.service; do
    if systemctl is-active --quiet "$unit"; then
      systemctl reload "$unit"
      log "reloaded $unit"
      return
    fi
  done
}

main() {
  local before name
  read_config
  read_restore_records
  ensure_dir "$ETC" 0755
  exec 9>>"$ETC/.lock"
  flock -w 600 9 || die "another offsite-boot holds $ETC/.lock"
  SCRATCH=$(mktemp -d)
  trap 'rm -rf "$SCRATCH"' EXIT
  DEVICE_DEADLINE=$(($(date +%s) + DEVICE_WAIT))
  before=$(sshd_state)
  step ensure_group
  step ensure_rrsync
  step install_host_key
  step install_ca_keys
  for name in "${HOST_NAMES[@]}"; do
    step setup_host "$name"
  done
  for name in "${!RESTORE_VOLUME[@]}"; do
    step mount_restore "$name"
  done
  step prune_principals
  step configure_sshd
  if [[ $(sshd_state) != "$before" ]]; then
    step reload_sshd
  fi
  if ((${#FAILED[@]} > 0)); then
    die "${#FAILED[@]} step(s) failed: $(printf '[%s] ' "${FAILED[@]}")"
  fi
  log "done: ${#HOST_NAMES[@]} host(s)"
}

main "$@"
